import type { ChaosBackend } from './backend.js';
import type { Attempt, DropRecord, History, InsertRecord, Outcome } from './checker.js';
import { classify } from './outcome.js';
import { derivedRandom, type Random } from './random.js';
import { deadlineSignal, sleepUnlessAborted } from './sleep.js';

/*
 * The chaos workload: concurrent clients insert rows with known ids through Chorus's HTTP port,
 * retry what was not acknowledged as a careful client would (the same body, with the same
 * insert_deduplication_token if the first try had one, to the same or another replica), and mix
 * DROP PARTITION / TRUNCATE into a table of their own. Every try is recorded for the checker.
 */

export const DATABASE = 'chaos';
/** Only inserts: every acknowledged row must survive. */
export const INSERTS_TABLE = `${DATABASE}.inserts`;
/** Inserts and drops: checks that drops apply in order against the inserts around them. */
export const DROPPED_TABLE = `${DATABASE}.dropped`;
/** One row per run, written by set-up to prove Chorus replicates the database before the clock starts. */
const PROBE_TABLE = `${DATABASE}.probe`;
export const CHECKED_TABLES = [INSERTS_TABLE, DROPPED_TABLE] as const;

/** Monthly partitions (the layout the integration tests use): `DROP PARTITION 202601` names one. */
const tableDdl = (table: string) =>
  `CREATE TABLE IF NOT EXISTS ${table} (insert_id UInt64, row_id UInt64, day Date, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY row_id`;

/** The partition literal of the n-th month (0-based) of the year the workload writes into. */
const partitionOf = (month: number) => `2026${String(month + 1).padStart(2, '0')}`;
/** A day of that month for a row (spread, so a part holds several days as real ones do). */
const dayOf = (month: number, row: number) => `2026-${String(month + 1).padStart(2, '0')}-${String(1 + (row % 28)).padStart(2, '0')}`;

export interface SetUpOptions {
  backend: Pick<ChaosBackend, 'replicas' | 'chorus' | 'clickhouse' | 'onEvery'>;
  /** Tags the probe row; any string unique to the run. */
  runId: string;
  /** How long an insert through Chorus may take to reach every replica before set-up gives up. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Creates the tables on every ClickHouse (DDL is not replicated), empties them through Chorus
 * (a replicated, ordered TRUNCATE, in case the cluster ran a workload before), and proves an
 * insert through Chorus reaches every replica: a database the sidecars do not replicate would
 * otherwise show up only at the end, as rows on one replica each.
 */
export async function setUpWorkload(options: SetUpOptions): Promise<void> {
  const { backend, runId, signal } = options;
  const timeoutMs = options.timeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  const [first] = backend.replicas;
  if (first === undefined) throw new Error('the backend has no replicas');
  await backend.onEvery(`CREATE DATABASE IF NOT EXISTS ${DATABASE}`);
  for (const table of CHECKED_TABLES) await backend.onEvery(tableDdl(table));
  await backend.onEvery(`CREATE TABLE IF NOT EXISTS ${PROBE_TABLE} (run String) ENGINE = MergeTree ORDER BY run`);

  /** Sends until Chorus answers 200 (a replica just started may answer 503 for a moment). */
  const untilAcknowledged = async (query: string, body?: string) => {
    for (;;) {
      const result = await backend.chorus({ replica: first, query, ...(body !== undefined ? { body } : {}), timeoutMs: 10_000 });
      if (result.kind === 'reply' && result.status === 200) return;
      const why = result.kind === 'reply' ? `${result.status} ${result.body.trim().slice(0, 300)}` : result.error;
      if (Date.now() > deadline || signal?.aborted) throw new Error(`set-up: ${query} through Chorus on ${first} was not acknowledged: ${why}`);
      await sleepUnlessAborted(500, signal);
    }
  };
  for (const table of CHECKED_TABLES) await untilAcknowledged(`TRUNCATE TABLE ${table}`);
  await untilAcknowledged(`INSERT INTO ${PROBE_TABLE} FORMAT TabSeparated`, `${runId}\n`);

  const replicated = async (replica: string) => {
    const [probe, ...counts] = await Promise.all([
      backend.clickhouse(replica, `SELECT count() FROM ${PROBE_TABLE} WHERE run = '${runId}'`),
      ...CHECKED_TABLES.map((t) => backend.clickhouse(replica, `SELECT count() FROM ${t}`)),
    ]);
    return Number(probe!.trim()) === 1 && counts.every((c) => Number(c.trim()) === 0);
  };
  for (;;) {
    const ready = await Promise.all(backend.replicas.map((r) => replicated(r).catch(() => false)));
    if (ready.every(Boolean)) return;
    if (Date.now() > deadline || signal?.aborted) {
      const missing = backend.replicas.filter((_, i) => !ready[i]);
      throw new Error(
        `set-up: an insert through Chorus on ${first} did not reach ${missing.join(', ')} within ${timeoutMs} ms, or the truncated tables are not empty there: is ${DATABASE} among the sidecars' clickhouse.databases?`,
      );
    }
    await sleepUnlessAborted(250, signal);
  }
}

export interface WorkloadOptions {
  backend: Pick<ChaosBackend, 'replicas' | 'chorus'>;
  seed: number;
  /** Clients stop starting new operations after this long (attempts in flight finish). */
  durationMs: number;
  /** Stops the workload early (Ctrl-C), like the end of the duration. */
  signal?: AbortSignal;
  /** Concurrent clients, each a closed loop of one operation at a time. */
  clients?: number;
  /** Each try's own limit; one with no answer by then is unknown. */
  attemptTimeoutMs?: number;
  /** How long an operation is retried before its client gives up on it and moves on. */
  retryBudgetMs?: number;
  maxRowsPerInsert?: number;
  /** Monthly partitions the rows spread over (one per insert: an insert makes one part). */
  partitions?: number;
  /** Share of operations that go to the dropped table... */
  droppedTableShare?: number;
  /** ...and share of those that are a DROP PARTITION or TRUNCATE rather than an insert. */
  dropShare?: number;
  /** Share of inserts that carry an insert_deduplication_token (all their tries carry the same). */
  tokenShare?: number;
  /**
   * Unique to the run; in every row's payload and token, so no insert of this run has the same
   * content or token as one of an earlier run on the same cluster (it would be deduplicated).
   */
  runId: string;
  /** Called after each try (progress output). */
  onAttempt?: (attempt: Attempt) => void;
}

export interface OutcomeCounts {
  ok: number;
  failed: number;
  unknown: number;
}

export interface WorkloadCounters {
  /** Every try, by outcome. */
  attempts: OutcomeCounts;
  /** Logical inserts: ok if any try was, failed if every try was, unknown otherwise. */
  inserts: OutcomeCounts;
  drops: OutcomeCounts;
  rowsAcknowledged: number;
}

/** Tries that ended in one second of the run. */
export interface SecondSample extends OutcomeCounts {
  /** Seconds since the workload started. */
  second: number;
}

export interface WorkloadResult {
  history: History;
  startedAt: number;
  endedAt: number;
  counters: WorkloadCounters;
  perSecond: SecondSample[];
}

const DEFAULTS = {
  clients: 8,
  attemptTimeoutMs: 10_000,
  retryBudgetMs: 30_000,
  maxRowsPerInsert: 5,
  partitions: 4,
  droppedTableShare: 0.3,
  dropShare: 0.05,
  tokenShare: 0.5,
};

/** The outcome of an operation from its tries, as the checker decides it. */
export function operationOutcome(attempts: readonly Attempt[]): Outcome {
  if (attempts.some((a) => a.outcome === 'ok')) return 'ok';
  return attempts.length > 0 && attempts.every((a) => a.outcome === 'failed') ? 'failed' : 'unknown';
}

interface Request {
  query: string;
  body?: string;
  params?: Record<string, string>;
}

/**
 * Runs the clients for `durationMs` (or until `signal`) and returns the history of every
 * operation. An operation is retried with a short random back-off until acknowledged, its retry
 * budget is spent, or the workload stops; a try in flight when it stops is let finish.
 */
export async function runWorkload(options: WorkloadOptions): Promise<WorkloadResult> {
  const settings = { ...DEFAULTS, ...definedOnly(options) };
  const { backend, runId } = options;
  const replicas = backend.replicas;
  if (replicas.length === 0) throw new Error('the backend has no replicas');
  if (settings.partitions < 1 || settings.partitions > 12) throw new Error('partitions must be 1..12 (months of one year)');

  const startedAt = Date.now();
  const deadline = deadlineSignal(options.durationMs, options.signal);
  const stop = deadline.signal;

  const history: History = { inserts: [], drops: [] };
  const perSecond: SecondSample[] = [];
  const attemptCounts: OutcomeCounts = { ok: 0, failed: 0, unknown: 0 };
  let nextInsertId = 1;
  let nextRowId = 1;

  const recordAttempt = (attempts: Attempt[], attempt: Attempt) => {
    attempts.push(attempt);
    attemptCounts[attempt.outcome]++;
    const second = Math.max(0, Math.floor((attempt.endedAt - startedAt) / 1000));
    for (let s = perSecond.length; s <= second; s++) perSecond.push({ second: s, ok: 0, failed: 0, unknown: 0 });
    perSecond[second]![attempt.outcome]++;
    options.onAttempt?.(attempt);
  };

  /** Tries `request` until acknowledged, out of budget, or stopped; each try goes into `attempts`. */
  const perform = async (random: Random, request: Request, attempts: Attempt[]) => {
    const budgetEnds = Date.now() + settings.retryBudgetMs;
    let replica = random.pick(replicas);
    for (let tries = 1; ; tries++) {
      const attemptStarted = Date.now();
      const { outcome, detail } = classify(
        await backend
          .chorus({ replica, ...request, timeoutMs: settings.attemptTimeoutMs })
          .catch((err: unknown) => ({ kind: 'no-reply' as const, sent: true, error: `backend threw: ${err instanceof Error ? err.message : String(err)}` })),
      );
      recordAttempt(attempts, { replica, outcome, startedAt: attemptStarted, endedAt: Date.now(), detail });
      if (outcome === 'ok' || stop.aborted || Date.now() >= budgetEnds) return;
      // Up to a second, growing with the tries: a replica that is down is not hammered, and a
      // 503 (Retry-After: 1) is given about the time it asks for.
      if (!(await sleepUnlessAborted(random.int(50, Math.min(1000, 100 * tries)), stop))) return;
      // Half the retries go elsewhere: a client that gave up on a replica tries another.
      if (random.chance(0.5)) replica = random.pick(replicas);
    }
  };

  const insert = async (random: Random, table: string) => {
    const id = nextInsertId++;
    const month = random.int(0, settings.partitions - 1);
    const rows = Array.from({ length: random.int(1, settings.maxRowsPerInsert) }, () => nextRowId++);
    const body = rows.map((row) => `${id}\t${row}\t${dayOf(month, row)}\t${runId}-${row}-${'x'.repeat(random.int(0, 40))}\n`).join('');
    const operation: InsertRecord = { id, table, partition: partitionOf(month), rows, attempts: [] };
    history.inserts.push(operation);
    const params = random.chance(settings.tokenShare) ? { insert_deduplication_token: `chaos-${runId}-${id}` } : undefined;
    await perform(random, { query: `INSERT INTO ${table} FORMAT TabSeparated`, body, ...(params ? { params } : {}) }, operation.attempts);
  };

  const drop = async (random: Random) => {
    // Mostly one partition, sometimes the whole table: both must apply in order on every replica.
    const partition = random.chance(0.75) ? partitionOf(random.int(0, settings.partitions - 1)) : null;
    const operation: DropRecord = { table: DROPPED_TABLE, partition, attempts: [] };
    history.drops.push(operation);
    const query = partition === null ? `TRUNCATE TABLE ${DROPPED_TABLE}` : `ALTER TABLE ${DROPPED_TABLE} DROP PARTITION ${partition}`;
    await perform(random, { query }, operation.attempts);
  };

  const client = async (index: number) => {
    const random = derivedRandom(options.seed, `client-${index}`);
    while (!stop.aborted) {
      if (!random.chance(settings.droppedTableShare)) await insert(random, INSERTS_TABLE);
      else if (random.chance(settings.dropShare)) await drop(random);
      else await insert(random, DROPPED_TABLE);
    }
  };

  await Promise.all(Array.from({ length: settings.clients }, (_, i) => client(i))).finally(deadline.dispose);

  const tally = (operations: Array<{ attempts: Attempt[] }>): OutcomeCounts => {
    const counts: OutcomeCounts = { ok: 0, failed: 0, unknown: 0 };
    for (const op of operations) counts[operationOutcome(op.attempts)]++;
    return counts;
  };
  return {
    history,
    startedAt,
    endedAt: Date.now(),
    counters: {
      attempts: attemptCounts,
      inserts: tally(history.inserts),
      drops: tally(history.drops),
      rowsAcknowledged: history.inserts.filter((i) => operationOutcome(i.attempts) === 'ok').reduce((n, i) => n + i.rows.length, 0),
    },
    perSecond,
  };
}

/** The options a caller set, so that an explicit `undefined` does not override a default. */
function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}
