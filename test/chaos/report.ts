import type { FaultKind } from './backend.js';
import { formatReport, type Attempt, type CheckReport, type History } from './checker.js';
import type { TimelineEntry } from './nemesis.js';
import type { OutcomeCounts, SecondSample, WorkloadCounters } from './workload.js';

/*
 * The chaos run's report: what was done (seed, faults, operations), what the checker found,
 * how long the replicas took to agree after the heal, and which faults came with which outcomes.
 * Text for people, JSON (--json) for scripts and the README's figures.
 */

/** A fault of the timeline with the tries that ended while it was in effect. */
export interface FaultWithOutcomes extends TimelineEntry {
  outcomes: OutcomeCounts;
}

export interface ChaosResult {
  /** The checker passed: nothing lost, unexpected, duplicated, divergent, or left by a drop. */
  ok: boolean;
  seed: number;
  runId: string;
  backend: string;
  clickhouse: string;
  clients: number;
  durationMs: number;
  faults: FaultKind[];
  /** What the operator should know about how the run went (kinds left out, a slow convergence...). */
  notes: string[];
  workload: { startedAt: number; endedAt: number; counters: WorkloadCounters; perSecond: SecondSample[] };
  timeline: FaultWithOutcomes[];
  faultsInjected: Partial<Record<FaultKind, { injected: number; failed: number }>>;
  /** When backend.healAll() returned. */
  healedAllAt: number;
  convergence: { afterMs: number | null; settled: boolean; timeoutMs: number };
  check: CheckReport;
}

/** Counts, for each fault, the tries that ended between its injection and its heal (or `until`). */
export function outcomesDuring(timeline: readonly TimelineEntry[], history: History, until: number): FaultWithOutcomes[] {
  const attempts: Attempt[] = [...history.inserts, ...history.drops].flatMap((op) => op.attempts);
  return timeline.map((entry) => {
    const outcomes: OutcomeCounts = { ok: 0, failed: 0, unknown: 0 };
    const end = entry.healedAt ?? until;
    if (entry.error === undefined) {
      for (const a of attempts) if (a.endedAt >= entry.injectedAt && a.endedAt <= end) outcomes[a.outcome]++;
    }
    return { ...entry, outcomes };
  });
}

export function faultsPerKind(timeline: readonly TimelineEntry[]): Partial<Record<FaultKind, { injected: number; failed: number }>> {
  const perKind: Partial<Record<FaultKind, { injected: number; failed: number }>> = {};
  for (const entry of timeline) {
    const counts = (perKind[entry.kind] ??= { injected: 0, failed: 0 });
    if (entry.error === undefined) counts.injected++;
    else counts.failed++;
  }
  return perKind;
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const counts = (c: OutcomeCounts) => `${c.ok} ok, ${c.failed} failed, ${c.unknown} unknown`;

/** Columns of figures (`numeric`) right-aligned, the others left-aligned. */
function table(header: string[], rows: string[][], numeric: ReadonlySet<number>): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (numeric.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

const EXAMPLES = 10;

/** A few of each violation, enough to start looking (the JSON has them all). */
function violationExamples(check: CheckReport): string[] {
  const lines: string[] = [];
  const some = <T>(title: string, items: T[], describe: (item: T) => string) => {
    if (items.length === 0) return;
    lines.push(`  ${title} (${items.length}${items.length > EXAMPLES ? `, first ${EXAMPLES}` : ''}):`);
    for (const item of items.slice(0, EXAMPLES)) lines.push(`    ${describe(item)}`);
  };
  for (const t of check.tables) {
    some(`${t.table} lost`, t.lost, (v) => `row ${v.row} of insert ${v.insert}, missing on ${v.missingOn.join(', ')}`);
    some(`${t.table} unexpected`, t.unexpected, (v) => `row ${v.row} on ${v.replica} (${v.insert === null ? 'no insert has it' : `insert ${v.insert} failed`})`);
    some(`${t.table} duplicated`, t.duplicated, (v) => `row ${v.row} stored ${v.copies} times on ${v.replica}`);
    some(`${t.table} divergent`, t.divergent, (v) => `row ${v.row} on ${v.presentOn.join(', ') || 'none'}, not on ${v.missingOn.join(', ')}`);
    some(`${t.table} survived a drop`, t.survivedDrop, (v) => `row ${v.row} of insert ${v.insert}, still on ${v.replicas.join(', ')}`);
  }
  return lines.length ? ['', 'violations:', ...lines] : [];
}

export function renderText(result: ChaosResult): string {
  const { workload, convergence } = result;
  const c = workload.counters;
  const runSeconds = Math.max(1, (workload.endedAt - workload.startedAt) / 1000);
  const acknowledgedPerSecond = workload.perSecond.map((s) => s.ok);
  const slowest = acknowledgedPerSecond.length ? Math.min(...acknowledgedPerSecond) : 0;
  const fastest = acknowledgedPerSecond.length ? Math.max(...acknowledgedPerSecond) : 0;
  const lines = [
    `chaos run ${result.runId}: seed ${result.seed} (repeat with --seed ${result.seed}), backend ${result.backend}, ClickHouse ${result.clickhouse}, ${seconds(result.durationMs)}, ${result.clients} clients`,
    `faults: ${result.faults.join(', ') || 'none'}`,
    '',
    formatReport(result.check),
    '',
    `inserts: ${counts(c.inserts)} (${c.rowsAcknowledged} rows acknowledged); drops: ${counts(c.drops)}`,
    `tries: ${counts(c.attempts)}; ${(c.attempts.ok / runSeconds).toFixed(1)} acknowledged/s on average, ${slowest} to ${fastest} in a second`,
    `convergence after heal: ${
      convergence.afterMs === null ? `none within ${seconds(convergence.timeoutMs)}` : `${seconds(convergence.afterMs)}${convergence.settled ? '' : ' (rows agree, but the cluster did not report itself settled)'}`
    }`,
  ];
  const kinds = Object.entries(result.faultsInjected);
  if (kinds.length) {
    lines.push('', ...table(['fault', 'injected', 'failed to inject'], kinds.map(([kind, n]) => [kind, String(n!.injected), String(n!.failed)]), new Set([1, 2])));
  }
  if (result.timeline.length) {
    lines.push(
      '',
      'timeline (tries ended while the fault was in effect):',
      ...table(
        ['at', 'fault', 'target', 'lasted', 'ok', 'failed', 'unknown', 'detail'],
        result.timeline.map((f) => [
          `+${seconds(f.injectedAt - workload.startedAt)}`,
          f.kind,
          f.other ? `${f.target}->${f.other}` : f.target,
          f.error !== undefined ? '-' : f.healedAt === null ? 'unhealed' : seconds(f.healedAt - f.injectedAt),
          String(f.outcomes.ok),
          String(f.outcomes.failed),
          String(f.outcomes.unknown),
          f.error !== undefined ? `INJECTION FAILED: ${f.error}` : `${f.detail}${f.healError !== undefined ? `; HEAL FAILED: ${f.healError}` : ''}`,
        ]),
        new Set([0, 3, 4, 5, 6]),
      ).map((line) => `  ${line}`),
    );
  }
  if (result.notes.length) lines.push('', ...result.notes.map((n) => `note: ${n}`));
  lines.push(...violationExamples(result.check));
  return lines.join('\n') + '\n';
}

export function renderJson(result: ChaosResult): string {
  return JSON.stringify(result, null, 2) + '\n';
}
