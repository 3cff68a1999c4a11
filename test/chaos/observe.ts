import type { ChaosBackend } from './backend.js';
import type { Observed } from './checker.js';
import { sleepUnlessAborted } from './sleep.js';

/*
 * What the replicas hold once the faults are healed: read from every ClickHouse directly (not
 * through Chorus, which would answer from one replica), polled until the replicas agree.
 */

/** Every replica's row ids of each table, one entry per stored copy. */
export async function readObserved(backend: Pick<ChaosBackend, 'replicas' | 'clickhouse'>, tables: readonly string[]): Promise<Observed> {
  const observed: Observed = {};
  await Promise.all(
    backend.replicas.map(async (replica) => {
      const byTable: Record<string, number[]> = {};
      for (const table of tables) {
        const text = await backend.clickhouse(replica, `SELECT row_id FROM ${table} FORMAT TabSeparated`);
        byTable[table] = text.split('\n').filter((line) => line !== '').map(Number);
      }
      observed[replica] = byTable;
    }),
  );
  return observed;
}

/** True when every replica holds the same multiset of rows in every table. */
export function replicasAgree(observed: Observed): boolean {
  const replicas = Object.keys(observed);
  const tables = new Set(replicas.flatMap((r) => Object.keys(observed[r]!)));
  for (const table of tables) {
    const sorted = replicas.map((r) => Float64Array.from(observed[r]![table] ?? []).sort());
    const [first, ...rest] = sorted;
    if (rest.some((other) => other.length !== first!.length || other.some((v, i) => v !== first![i]))) return false;
  }
  return true;
}

export interface ConvergenceOptions {
  backend: Pick<ChaosBackend, 'replicas' | 'clickhouse' | 'settled'>;
  tables: readonly string[];
  /** Counted from the call; give up (and report what is there) after it. */
  timeoutMs: number;
  pollMs?: number;
  signal?: AbortSignal;
}

export interface Convergence {
  /** The last reading: what the checker judges. */
  observed: Observed;
  /** From the call until the replicas agreed for good; null if they never did in time. */
  convergedAfterMs: number | null;
  /** Whether the backend also reported every member alive and without lag when the reading was taken. */
  settled: boolean;
}

/**
 * Polls until the replicas hold the same rows and the backend says the cluster has settled
 * (agreement alone could be a moment where none has yet applied an entry still travelling).
 * The convergence time is when the agreement began that lasted until then. At the timeout the
 * last reading is returned as it is, for the checker to report what diverges; a replica that
 * could not be read at all by then is an error.
 */
export async function awaitConvergence(options: ConvergenceOptions): Promise<Convergence> {
  const { backend, tables, signal } = options;
  const pollMs = options.pollMs ?? 500;
  const started = Date.now();
  const deadline = started + options.timeoutMs;
  let agreeingSince: number | null = null;
  let last: Observed | null = null;
  let lastError: unknown = null;
  for (;;) {
    const readAt = Date.now();
    try {
      last = await readObserved(backend, tables);
      lastError = null;
    } catch (err) {
      last = null;
      lastError = err;
    }
    if (last && replicasAgree(last)) {
      agreeingSince ??= readAt;
      const settled = await backend.settled().catch(() => false);
      if (settled) return { observed: last, convergedAfterMs: agreeingSince - started, settled };
    } else {
      agreeingSince = null;
    }
    if (Date.now() >= deadline || signal?.aborted) {
      if (!last) throw new Error(`could not read every replica after the heal: ${lastError instanceof Error ? lastError.message : String(lastError)}`);
      return { observed: last, convergedAfterMs: agreeingSince === null ? null : agreeingSince - started, settled: false };
    }
    await sleepUnlessAborted(pollMs, signal);
  }
}
