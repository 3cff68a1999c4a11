import { randomInt } from 'node:crypto';

/**
 * The chaos suite's seeded randomness: a run printed with its seed can be played again with the
 * same schedule of faults and the same choices of every client. Math.random is never used.
 */

export interface Random {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [min, max], both included. */
  int(min: number, max: number): number;
  /** True with probability `p`. */
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[];
}

/** mulberry32: small, fast, and good enough to spread faults and choices; not for secrets. */
export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const int = (min: number, max: number) => min + Math.floor(next() * (max - min + 1));
  return {
    next,
    int,
    chance: (p) => next() < p,
    pick: (items) => {
      if (items.length === 0) throw new Error('pick from an empty list');
      return items[int(0, items.length - 1)]!;
    },
    shuffle: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = int(0, i);
        [out[i], out[j]] = [out[j]!, out[i]!];
      }
      return out;
    },
  };
}

/**
 * An independent stream per purpose (`nemesis`, `client-3`, ...), so that adding a client or a
 * fault kind does not shift every other stream, and concurrent clients, whose draws interleave
 * in an order timing decides, still each make the same choices for a seed.
 */
export function derivedRandom(seed: number, purpose: string): Random {
  // FNV-1a of the purpose, mixed into the seed.
  let hash = 0x811c9dc5;
  for (let i = 0; i < purpose.length; i++) hash = Math.imul(hash ^ purpose.charCodeAt(i), 0x01000193);
  return seededRandom((seed ^ hash) >>> 0);
}

/** A seed for a run that was given none (printed, so that the run can be repeated). */
export function freshSeed(): number {
  return randomInt(2 ** 32);
}
