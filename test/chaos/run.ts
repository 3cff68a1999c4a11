/**
 * `npm run chaos -- --duration SECONDS --faults LIST|all|none [--seed N] [--clickhouse server|chdb]
 * [--backend local|kind] [--clients N] [--json]`: starts a backend, runs the workload and the
 * nemesis together for the duration, heals, waits for the replicas to agree, and checks the
 * history against what every replica holds. runChaos() is the same run for the test suite.
 *
 * Exit codes: 0 the checker passed, 1 it found a violation, 2 bad arguments, 3 the run itself
 * broke (the backend did not start, set-up failed, a replica could not be read), 130/143
 * interrupted by SIGINT/SIGTERM.
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { FAULT_KINDS, isFaultKind, type BackendStartOptions, type ChaosBackend, type FaultKind } from './backend.js';
import { check } from './checker.js';
import { DEFAULT_SESSION_TIMEOUT_MS, minimalSpanMs, runNemesis, schedule, type NemesisEvent, type ScheduleOptions } from './nemesis.js';
import { awaitConvergence } from './observe.js';
import { freshSeed } from './random.js';
import { deadlineSignal } from './sleep.js';
import { faultsPerKind, outcomesDuring, renderJson, renderText, type ChaosResult } from './report.js';
import { CHECKED_TABLES, DATABASE, runWorkload, setUpWorkload, type OutcomeCounts, type WorkloadOptions } from './workload.js';

export const BACKEND_NAMES = ['local', 'kind'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
export const CLICKHOUSE_KINDS = ['server', 'chdb'] as const;
export type ClickHouseKind = (typeof CLICKHOUSE_KINDS)[number];

/** Bad arguments or a request the backend cannot serve: exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The run was stopped (SIGINT/SIGTERM) before it had a verdict. */
export class InterruptedError extends Error {
  override name = 'InterruptedError';
}

/** Starts a backend by name; each lives in its own module, loaded only when asked for (the kind one needs kubectl). */
export async function createBackend(name: BackendName, options: BackendStartOptions): Promise<ChaosBackend> {
  switch (name) {
    case 'local': {
      const { LocalBackend } = await import('./local-backend.js');
      return LocalBackend.start(options);
    }
    case 'kind': {
      const { KindBackend } = await import('./kind-backend.js');
      return KindBackend.start(options);
    }
  }
}

export interface ChaosOptions {
  durationMs: number;
  /** `all`: every kind the backend supports. */
  faults: readonly FaultKind[] | 'all';
  seed: number;
  backend: BackendName;
  clickhouse: ClickHouseKind;
  clients: number;
  /** From healAll() until the replicas must agree. */
  convergenceTimeoutMs?: number;
  setUpTimeoutMs?: number;
  /** Stops the run (Ctrl-C): it then ends with InterruptedError, after closing the backend. */
  signal?: AbortSignal;
  /** Progress lines (the CLI writes them on stderr). */
  log?: (line: string) => void;
  /** How the backend is started: createBackend unless a test brings its own. */
  startBackend?: (name: BackendName, options: BackendStartOptions) => Promise<ChaosBackend>;
  /**
   * A backend already running, which the run uses and leaves running (healed) for the caller to
   * close: the test suite runs one scenario per fault kind on one cluster.
   */
  runningBackend?: ChaosBackend;
  /** Leaves the backend's files (logs, data) in place after the run. */
  keep?: boolean;
  /** The sidecars' zookeeper.leaseSize, for a backend the run starts (0: leases off). */
  leaseSize?: number;
  workload?: Partial<Pick<WorkloadOptions, 'attemptTimeoutMs' | 'retryBudgetMs' | 'maxRowsPerInsert' | 'partitions' | 'droppedTableShare' | 'dropShare' | 'tokenShare'>>;
  nemesis?: Pick<ScheduleOptions, 'startDelayMs' | 'gapMs' | 'durations'>;
}

const REPLICAS = 3;
const PROGRESS_EVERY_MS = 10_000;

/** Which kinds to run: all the backend supports for `all`; a list asking for others is refused. */
function resolveFaults(requested: ChaosOptions['faults'], backend: ChaosBackend, notes: string[]): FaultKind[] {
  if (requested === 'all') {
    const skipped = FAULT_KINDS.filter((k) => !backend.supportedFaults.has(k));
    if (skipped.length) notes.push(`backend ${backend.name} cannot inject ${skipped.join(', ')}; run without them`);
    return FAULT_KINDS.filter((k) => backend.supportedFaults.has(k));
  }
  const unsupported = requested.filter((k) => !backend.supportedFaults.has(k));
  if (unsupported.length) {
    throw new UsageError(`backend ${backend.name} cannot inject ${unsupported.join(', ')} (it can: ${[...backend.supportedFaults].join(', ') || 'nothing'})`);
  }
  return [...new Set(requested)];
}

function describeEvent(event: NemesisEvent, startedAt: number): string {
  const { entry } = event;
  const at = `+${((Date.now() - startedAt) / 1000).toFixed(1)}s`;
  const what = `${entry.kind} ${entry.other ? `${entry.target}->${entry.other}` : entry.target}`;
  switch (event.type) {
    case 'injected':
      return `${at} injected ${what} for ${(entry.plannedDurationMs / 1000).toFixed(1)} s: ${entry.detail}`;
    case 'inject-failed':
      return `${at} could not inject ${what}: ${entry.error}`;
    case 'healed':
      return `${at} healed ${what}`;
    case 'heal-failed':
      return `${at} could not heal ${what} (healAll will): ${entry.healError}`;
  }
}

/**
 * One chaos run: backend up, tables set up, workload and nemesis together for the duration, the
 * workload's last tries let finish, everything healed, the replicas read until they agree, the
 * history checked. The backend is closed whatever happens.
 */
export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const log = options.log ?? (() => undefined);
  const { seed, signal } = options;
  const runId = `${seed.toString(36)}${Date.now().toString(36)}`;
  const notes: string[] = [];
  const interrupted = () => {
    if (signal?.aborted) throw new InterruptedError('interrupted');
  };
  log(`seed ${seed} (repeat with --seed ${seed}), run ${runId}`);
  log(`starting the ${options.backend} backend (ClickHouse ${options.clickhouse}, ${REPLICAS} replicas)`);
  const backend =
    options.runningBackend ??
    (await (options.startBackend ?? createBackend)(options.backend, { clickhouse: options.clickhouse, replicas: REPLICAS, databases: ['default', DATABASE], keep: options.keep ?? false, leaseSize: options.leaseSize ?? 0, log }));
  try {
    interrupted();
    const faults = resolveFaults(options.faults, backend, notes);
    const timing = { faults, zookeeperSessionTimeoutMs: backend.zookeeperSessionTimeoutMs ?? DEFAULT_SESSION_TIMEOUT_MS, ...options.nemesis };
    const plan = schedule({ ...timing, seed, durationMs: options.durationMs, replicas: backend.replicas });
    const missing = faults.filter((k) => !plan.some((f) => f.kind === k));
    if (missing.length) {
      notes.push(`${(options.durationMs / 1000).toFixed(0)} s is too short for every fault kind once (${(minimalSpanMs(timing) / 1000).toFixed(0)} s needed): ${missing.join(', ')} left out`);
    }
    log(`${plan.length} faults scheduled: ${plan.map((f) => f.kind).join(', ') || 'none'}`);

    // The sidecars keep reporting earlier runs' duplicates: only the ones this run adds are its own.
    const reportedBefore = await backend.reportedDuplicates();
    log('setting up the tables');
    await setUpWorkload({ backend, runId, ...(options.setUpTimeoutMs !== undefined ? { timeoutMs: options.setUpTimeoutMs } : {}), ...(signal ? { signal } : {}) });
    interrupted();

    // Both stop at the end of the duration, or at once on Ctrl-C.
    const runEnd = deadlineSignal(options.durationMs, signal);
    const live: OutcomeCounts = { ok: 0, failed: 0, unknown: 0 };
    const startedAt = Date.now();
    const progress = setInterval(() => log(`+${Math.round((Date.now() - startedAt) / 1000)}s tries: ${live.ok} ok, ${live.failed} failed, ${live.unknown} unknown`), PROGRESS_EVERY_MS);
    log(`running ${options.clients} clients for ${(options.durationMs / 1000).toFixed(0)} s`);
    const [workloadRun, nemesisRun] = await Promise.allSettled([
      runWorkload({
        ...options.workload,
        backend,
        seed,
        runId,
        durationMs: options.durationMs,
        clients: options.clients,
        signal: runEnd.signal,
        onAttempt: (a) => live[a.outcome]++,
      }),
      runNemesis({ backend, schedule: plan, signal: runEnd.signal, startedAt, onEvent: (e) => log(describeEvent(e, startedAt)) }),
    ]).finally(() => {
      runEnd.dispose();
      clearInterval(progress);
    });
    if (workloadRun.status === 'rejected') throw workloadRun.reason;
    if (nemesisRun.status === 'rejected') throw nemesisRun.reason;
    interrupted();
    const workload = workloadRun.value;
    const timeline = nemesisRun.value;

    log('healing every fault');
    await backend.healAll();
    const healedAllAt = Date.now();
    const convergenceTimeoutMs = options.convergenceTimeoutMs ?? 120_000;
    log(`waiting up to ${(convergenceTimeoutMs / 1000).toFixed(0)} s for the replicas to agree`);
    const convergence = await awaitConvergence({ backend, tables: CHECKED_TABLES, timeoutMs: convergenceTimeoutMs, ...(signal ? { signal } : {}) });
    interrupted();
    if (convergence.convergedAfterMs === null) notes.push(`the replicas did not agree within ${(convergenceTimeoutMs / 1000).toFixed(0)} s of the heal; checked as they were`);

    const reported = Object.fromEntries(
      Object.entries(await backend.reportedDuplicates()).flatMap(([table, pairs]) => {
        const fresh = pairs.filter((p) => !(reportedBefore[table] ?? []).includes(p)).length;
        return fresh ? [[table, fresh]] : [];
      }),
    );
    const report = check(workload.history, convergence.observed, reported);
    const stored = Object.entries(reported).map(([table, n]) => `${table} ${n}`);
    if (stored.length) notes.push(`blocks the sidecars reported stored twice while ZooKeeper was away: ${stored.join(', ')}`);
    for (const exit of backend.unexpectedExits ?? []) notes.push(`unexpected exit: ${exit}`);
    return {
      ok: report.ok,
      seed,
      runId,
      backend: backend.name,
      clickhouse: options.clickhouse,
      clients: options.clients,
      durationMs: options.durationMs,
      faults,
      notes,
      workload: { startedAt: workload.startedAt, endedAt: workload.endedAt, counters: workload.counters, perSecond: workload.perSecond },
      timeline: outcomesDuring(timeline, workload.history, healedAllAt),
      faultsInjected: faultsPerKind(timeline),
      healedAllAt,
      convergence: { afterMs: convergence.convergedAfterMs, settled: convergence.settled, timeoutMs: convergenceTimeoutMs },
      check: report,
    };
  } finally {
    if (options.runningBackend) await backend.healAll().catch((err: unknown) => log(`healing the backend failed: ${err instanceof Error ? err.message : String(err)}`));
    else await closeBackend(backend, log);
  }
}

async function closeBackend(backend: ChaosBackend, log: (line: string) => void): Promise<void> {
  log('closing the backend');
  await backend.close().catch((err: unknown) => log(`closing the backend failed: ${err instanceof Error ? err.message : String(err)}`));
}

const USAGE = `usage: npm run chaos -- --duration SECONDS --faults LIST|all|none [--seed N] [--clickhouse server|chdb] [--backend local|kind] [--clients N] [--json]
  --faults      comma-separated, of: ${FAULT_KINDS.join(', ')}
  --seed        repeats a run (printed at the start of each); random when not given
  --clickhouse  server (Debian's clickhouse-server, the default) or chdb
  --backend     local (namespaces on this machine, the default) or kind
  --clients     concurrent clients (default 8)
  --json        the report as JSON on stdout (progress stays on stderr)
  --keep        leave the cluster's files (every process's log) in place after the run
  --lease-size  the sidecars' zookeeper.leaseSize (default 0: off); with it, inserts go on while ZooKeeper is away
  --fault-seconds  every fault lasts exactly this long (ZooKeeper away for a minute:
                --faults restart-zookeeper --fault-seconds 60 --duration 90 --lease-size 5000)`;

function positiveInteger(name: string, text: string | undefined, fallback?: number): number {
  if (text === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required`);
    return fallback;
  }
  if (!/^\d+$/.test(text) || Number(text) <= 0 || !Number.isSafeInteger(Number(text))) throw new UsageError(`--${name} takes a positive integer, not ${JSON.stringify(text)}`);
  return Number(text);
}

function oneOf<T extends string>(name: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) throw new UsageError(`--${name} takes ${allowed.join(' or ')}, not ${JSON.stringify(text)}`);
  return text as T;
}

export interface CliArguments {
  options: Omit<ChaosOptions, 'signal' | 'log' | 'startBackend'>;
  json: boolean;
}

/** The command line as runChaos options; UsageError on anything wrong. */
export function parseCli(argv: string[]): CliArguments | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        duration: { type: 'string' },
        faults: { type: 'string' },
        seed: { type: 'string' },
        clickhouse: { type: 'string', default: 'server' },
        backend: { type: 'string', default: 'local' },
        clients: { type: 'string' },
        json: { type: 'boolean', default: false },
        keep: { type: 'boolean', default: false },
        'lease-size': { type: 'string' },
        'fault-seconds': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) return 'help';
  if (values.faults === undefined) throw new UsageError('--faults is required (a list, all, or none)');
  const names = values.faults.split(',').map((f) => f.trim()).filter((f) => f !== '');
  let faults: FaultKind[] | 'all';
  if (names.length === 1 && names[0] === 'all') faults = 'all';
  else if (names.length === 1 && names[0] === 'none') faults = [];
  else {
    const unknown = names.filter((n) => !isFaultKind(n));
    if (unknown.length || names.length === 0) throw new UsageError(`--faults: unknown fault kind ${unknown.join(', ') || '(empty list)'}; known: ${FAULT_KINDS.join(', ')}, or all, or none`);
    faults = names.filter(isFaultKind);
  }
  const seedText = values.seed;
  if (seedText !== undefined && !(/^\d+$/.test(seedText) && Number(seedText) < 2 ** 32)) throw new UsageError(`--seed takes an integer from 0 to ${2 ** 32 - 1}, not ${JSON.stringify(seedText)}`);
  return {
    options: {
      durationMs: positiveInteger('duration', values.duration) * 1000,
      faults,
      seed: seedText === undefined ? freshSeed() : Number(seedText),
      clickhouse: oneOf('clickhouse', values.clickhouse!, CLICKHOUSE_KINDS),
      backend: oneOf('backend', values.backend!, BACKEND_NAMES),
      clients: positiveInteger('clients', values.clients, 8),
      keep: values.keep!,
      ...(values['lease-size'] !== undefined ? { leaseSize: positiveInteger('lease-size', values['lease-size']) } : {}),
      ...(values['fault-seconds'] !== undefined ? { nemesis: { durations: everyFaultLasting(positiveInteger('fault-seconds', values['fault-seconds']) * 1000) } } : {}),
    },
    json: values.json!,
  };
}

/** Every fault kind lasting exactly `ms` (`--fault-seconds`: ZooKeeper away for a minute is restart-zookeeper lasting 60). */
function everyFaultLasting(ms: number): Partial<Record<FaultKind, { minMs: number; maxMs: number }>> {
  return Object.fromEntries(FAULT_KINDS.map((kind) => [kind, { minMs: ms, maxMs: ms }]));
}

/** Writes `text` and exits once it is flushed (a piped JSON report cut short is worse than none). */
function exitAfter(stream: NodeJS.WriteStream, text: string, code: number): void {
  stream.write(text, () => process.exit(code));
}

async function main(): Promise<void> {
  let cli: CliArguments | 'help';
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    return exitAfter(process.stderr, `chaos: ${(err as Error).message}\n${USAGE}\n`, 2);
  }
  if (cli === 'help') return exitAfter(process.stdout, `${USAGE}\n`, 0);

  const interrupt = new AbortController();
  let signalCode = 0;
  const onSignal = (name: NodeJS.Signals, code: number) => {
    if (interrupt.signal.aborted) {
      process.stderr.write(`chaos: ${name} again, exiting without cleaning up (a later run sweeps stale namespaces)\n`);
      process.exit(code);
    }
    signalCode = code;
    process.stderr.write(`chaos: ${name}, stopping and cleaning up (again to exit at once)\n`);
    interrupt.abort();
  };
  process.on('SIGINT', () => onSignal('SIGINT', 130));
  process.on('SIGTERM', () => onSignal('SIGTERM', 143));

  const { options, json } = cli;
  try {
    const result = await runChaos({ ...options, signal: interrupt.signal, log: (line) => process.stderr.write(`chaos: ${line}\n`) });
    exitAfter(process.stdout, json ? renderJson(result) : renderText(result), result.ok ? 0 : 1);
  } catch (err) {
    if (err instanceof UsageError) return exitAfter(process.stderr, `chaos: ${err.message}\n`, 2);
    if (err instanceof InterruptedError || signalCode) return exitAfter(process.stderr, `chaos: interrupted (seed ${options.seed})\n`, signalCode || 130);
    exitAfter(process.stderr, `chaos: the run broke (seed ${options.seed}): ${(err as Error).stack ?? String(err)}\n`, 3);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) void main();
