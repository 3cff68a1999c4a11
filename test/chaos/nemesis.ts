import type { ChaosBackend, Fault, FaultKind } from './backend.js';
import { derivedRandom } from './random.js';
import { sleepUnlessAborted } from './sleep.js';

/*
 * The nemesis: a schedule of faults, computed up front from a seed (pure, so a run can be
 * repeated and the schedule tested), and an executor that injects and heals them on time.
 *
 * One fault at a time, with a quiet gap after each: a fault on top of an unhealed one mostly
 * finds what the first one found, and a gap lets the cluster partly recover, so the next fault
 * hits a replica catching up, which is where ordering bugs live.
 */

/** Inclusive bounds, in milliseconds. */
export interface Bounds {
  minMs: number;
  maxMs: number;
}

export interface ScheduleOptions {
  seed: number;
  /** The whole run; every fault is healed by then. */
  durationMs: number;
  faults: readonly FaultKind[];
  replicas: readonly string[];
  /** The sidecars' zookeeper.sessionTimeoutMs (the dev cluster uses 10 s). */
  zookeeperSessionTimeoutMs?: number;
  /** Quiet time before the first fault, so the workload is running when it comes. */
  startDelayMs?: number;
  /** The quiet time after each fault. */
  gapMs?: Bounds;
  /** Per-kind durations instead of durationBounds' (short runs in tests). */
  durations?: Partial<Record<FaultKind, Bounds>>;
}

/** A fault of the schedule, `startMs` after the nemesis starts. */
export interface ScheduledFault extends Fault {
  startMs: number;
}

export const DEFAULT_SESSION_TIMEOUT_MS = 10_000;
const DEFAULT_START_DELAY_MS = 3_000;
const DEFAULT_GAP: Bounds = { minMs: 2_000, maxMs: 6_000 };

/** How long a fault of each kind lasts, so that it does what its name says. */
export function durationBounds(kind: FaultKind, sessionTimeoutMs = DEFAULT_SESSION_TIMEOUT_MS): Bounds {
  switch (kind) {
    case 'expire-zookeeper-session':
      // ZooKeeper expires a session only after a whole timeout without a heartbeat, checked at
      // its tick: half a timeout more makes the expiry certain.
      return { minMs: Math.round(sessionTimeoutMs * 1.5), maxMs: sessionTimeoutMs * 2 };
    case 'partition-zookeeper':
      // Cut, then back well before the session could expire: the client sees a disconnect
      // (after two thirds of the timeout at most), never an expiry.
      return { minMs: Math.min(2_000, Math.round(sessionTimeoutMs / 4)), maxMs: Math.round(sessionTimeoutMs / 2) };
    case 'restart-zookeeper':
      return { minMs: 2_000, maxMs: 8_000 };
    default:
      return { minMs: 2_000, maxMs: 15_000 };
  }
}

function resolved(options: ScheduleOptions) {
  const sessionTimeoutMs = options.zookeeperSessionTimeoutMs ?? DEFAULT_SESSION_TIMEOUT_MS;
  return {
    kinds: [...new Set(options.faults)],
    startDelayMs: options.startDelayMs ?? DEFAULT_START_DELAY_MS,
    gap: options.gapMs ?? DEFAULT_GAP,
    bounds: (kind: FaultKind) => options.durations?.[kind] ?? durationBounds(kind, sessionTimeoutMs),
  };
}

/** The shortest run in which schedule() fits every requested kind once. */
export function minimalSpanMs(options: Omit<ScheduleOptions, 'seed' | 'durationMs' | 'replicas'>): number {
  const { kinds, startDelayMs, gap, bounds } = resolved({ ...options, seed: 0, durationMs: 0, replicas: [] });
  if (kinds.length === 0) return 0;
  return startDelayMs + kinds.reduce((sum, k) => sum + bounds(k).minMs, 0) + (kinds.length - 1) * gap.minMs;
}

/**
 * Faults in rounds: each round has every requested kind once, in a shuffled order, with random
 * durations, targets and gaps. In the first round the time the rest of it needs (minimum
 * durations and gaps) is kept free, so every kind appears whenever the run is at least
 * minimalSpanMs long; later rounds go on until the next fault does not fit.
 */
export function schedule(options: ScheduleOptions): ScheduledFault[] {
  const { kinds, startDelayMs, gap, bounds } = resolved(options);
  const { durationMs, replicas } = options;
  if (kinds.length === 0) return [];
  if (replicas.length === 0) throw new Error('a schedule needs at least one replica');
  if (kinds.includes('partition-one-way') && replicas.length < 2) throw new Error('partition-one-way needs at least two replicas');
  for (const kind of kinds) {
    const b = bounds(kind);
    if (!(b.minMs > 0 && b.minMs <= b.maxMs)) throw new Error(`bad duration bounds for ${kind}: ${b.minMs}..${b.maxMs} ms`);
  }
  if (!(gap.minMs >= 0 && gap.minMs <= gap.maxMs)) throw new Error(`bad gap bounds: ${gap.minMs}..${gap.maxMs} ms`);

  const random = derivedRandom(options.seed, 'nemesis');
  const faults: ScheduledFault[] = [];
  let pending = random.shuffle(kinds);
  let firstRound = true;
  let t = startDelayMs;
  for (;;) {
    if (pending.length === 0) {
      pending = random.shuffle(kinds);
      firstRound = false;
    }
    const kind = pending.shift()!;
    // Kept free in the first round for the kinds still to come: a gap and a shortest fault each.
    const reserved = firstRound ? pending.reduce((sum, k) => sum + gap.minMs + bounds(k).minMs, 0) : 0;
    const { minMs, maxMs } = bounds(kind);
    const room = durationMs - t - reserved;
    if (room < minMs) {
      // In the first round a kind that cannot fit is left out, and the others still get their turn.
      if (firstRound && pending.length > 0) continue;
      break;
    }
    const length = random.int(minMs, Math.min(maxMs, room));
    const target = random.pick(replicas);
    const fault: ScheduledFault = { kind, target, durationMs: length, startMs: t };
    if (kind === 'partition-one-way') fault.other = random.pick(replicas.filter((r) => r !== target));
    faults.push(fault);
    t += length;
    const slack = firstRound && pending.length > 0 ? Math.max(0, durationMs - t - reserved) : gap.maxMs - gap.minMs;
    t += gap.minMs + random.int(0, Math.min(gap.maxMs - gap.minMs, slack));
  }
  return faults;
}

/** What happened to one scheduled fault. Times are epoch milliseconds, as the workload's attempts. */
export interface TimelineEntry {
  kind: FaultKind;
  target: string;
  other?: string;
  plannedStartMs: number;
  plannedDurationMs: number;
  /** When inject() was called: the fault may be in effect from then. */
  injectedAt: number;
  /** When heal() returned: the fault may be in effect until then. Null if it was never healed (healAll does it). */
  healedAt: number | null;
  /** The backend's account of what it did (rules, pids, ...). */
  detail: string;
  /** Set when the injection failed: the fault did not happen (or only partly). */
  error?: string;
  healError?: string;
}

export type NemesisEvent =
  | { type: 'injected'; entry: TimelineEntry }
  | { type: 'inject-failed'; entry: TimelineEntry }
  | { type: 'healed'; entry: TimelineEntry }
  | { type: 'heal-failed'; entry: TimelineEntry };

export interface NemesisOptions {
  backend: Pick<ChaosBackend, 'inject'>;
  schedule: readonly ScheduledFault[];
  /** Stops the nemesis: a fault in effect is healed at once, no further one is injected. */
  signal?: AbortSignal;
  onEvent?: (event: NemesisEvent) => void;
  /** What startMs counts from (epoch ms); now when omitted. */
  startedAt?: number;
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * Injects each fault at its time and heals it after its duration. A fault the backend could not
 * inject, or not heal, is reported in the timeline rather than stopping the run: the workload
 * goes on, and the runner's healAll() cleans up whatever is left.
 */
export async function runNemesis(options: NemesisOptions): Promise<TimelineEntry[]> {
  const { backend, signal, onEvent } = options;
  const startedAt = options.startedAt ?? Date.now();
  const timeline: TimelineEntry[] = [];
  // A heal that takes long (a ClickHouse restart) must not eat the next gap: the planned gap is
  // kept after the actual heal, even if the schedule then runs late.
  let previous: { plannedEndMs: number; endedAt: number } | null = null;
  for (const fault of options.schedule) {
    const due = Math.max(startedAt + fault.startMs, previous ? previous.endedAt + (fault.startMs - previous.plannedEndMs) : 0);
    if (!(await sleepUnlessAborted(due - Date.now(), signal))) break;
    const entry: TimelineEntry = {
      kind: fault.kind,
      target: fault.target,
      ...(fault.other !== undefined ? { other: fault.other } : {}),
      plannedStartMs: fault.startMs,
      plannedDurationMs: fault.durationMs,
      injectedAt: Date.now(),
      healedAt: null,
      detail: '',
    };
    timeline.push(entry);
    let injected;
    try {
      injected = await backend.inject(fault);
    } catch (err) {
      entry.error = message(err);
      onEvent?.({ type: 'inject-failed', entry });
      previous = { plannedEndMs: fault.startMs + fault.durationMs, endedAt: Date.now() };
      continue;
    }
    entry.detail = injected.detail;
    onEvent?.({ type: 'injected', entry });
    await sleepUnlessAborted(entry.injectedAt + fault.durationMs - Date.now(), signal);
    try {
      await injected.heal();
      entry.healedAt = Date.now();
      onEvent?.({ type: 'healed', entry });
    } catch (err) {
      entry.healError = message(err);
      onEvent?.({ type: 'heal-failed', entry });
    }
    previous = { plannedEndMs: fault.startMs + fault.durationMs, endedAt: Date.now() };
  }
  return timeline;
}
