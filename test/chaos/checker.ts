/**
 * The chaos suite's checker, Jepsen-style: from the history of what clients attempted (with
 * what outcome) and what every replica holds once the faults are healed, it tells which of
 * DESIGN.md's invariants broke. Pure: the workload records the history, the runner reads the
 * replicas, this decides.
 *
 * Every row carries a unique id, and every insert a known set of row ids, so a row found on a
 * replica names the insert it came from.
 */

/** One try of an operation: `ok` acknowledged, `failed` definitely not applied, `unknown` either. */
export type Outcome = 'ok' | 'failed' | 'unknown';

export interface Attempt {
  replica: string;
  outcome: Outcome;
  startedAt: number;
  endedAt: number;
  detail?: string;
}

/** A logical insert: its rows, and every attempt made to store them (retries included). */
export interface InsertRecord {
  id: number;
  table: string;
  /** The partition its rows fall in (drops are checked per partition). */
  partition: string;
  rows: number[];
  attempts: Attempt[];
}

/** DROP PARTITION (partition set) or TRUNCATE (partition null) of a table. */
export interface DropRecord {
  table: string;
  partition: string | null;
  attempts: Attempt[];
}

export interface History {
  inserts: InsertRecord[];
  drops: DropRecord[];
}

/** Row ids per table per replica, one entry per stored copy (a row stored twice appears twice). */
export type Observed = Record<string, Record<string, number[]>>;

export interface TableReport {
  table: string;
  inserts: { acknowledged: number; failed: number; unknown: number };
  /** Rows that had to be on every replica and are missing from some. */
  lost: Array<{ row: number; insert: number; missingOn: string[] }>;
  /** Rows that belong to no insert, or to one that definitely failed. */
  unexpected: Array<{ row: number; replica: string; insert: number | null }>;
  /** Rows stored more than once on one replica. */
  duplicated: Array<{ row: number; replica: string; copies: number }>;
  /** Rows some replicas hold and others do not. */
  divergent: Array<{ row: number; presentOn: string[]; missingOn: string[] }>;
  /** Rows an acknowledged drop ordered after their insert's acknowledgement left in place. */
  survivedDrop: Array<{ row: number; insert: number; replicas: string[] }>;
  /** Inserts not acknowledged whose rows are partly present: reported, allowed (a multi-part insert may land part by part). */
  partial: number[];
  /**
   * Inserts stored twice on every replica that the sidecars reported as such (a retry through a
   * second replica while ZooKeeper was away, both on their leases): allowed, because reported.
   */
  reportedDuplicates: number[];
}

export interface CheckReport {
  tables: TableReport[];
  ok: boolean;
  violations: { lost: number; unexpected: number; duplicated: number; divergent: number; survivedDrop: number };
}

const acknowledgedAt = (attempts: Attempt[]): number | null => {
  const ok = attempts.filter((a) => a.outcome === 'ok').map((a) => a.endedAt);
  return ok.length ? Math.min(...ok) : null;
};

const definitelyFailed = (attempts: Attempt[]) => attempts.length > 0 && attempts.every((a) => a.outcome === 'failed');

const firstStart = (attempts: Attempt[]) => Math.min(...attempts.map((a) => a.startedAt));

/** The last moment a drop that may have happened could have taken effect. */
// A try whose outcome is unknown may still be running in the server after the client gave up
// (a drop waiting for its LSN through a ZooKeeper fault): it may take effect at any later time.
const lastEnd = (attempts: Attempt[]) => (attempts.some((a) => a.outcome === 'unknown') ? Infinity : Math.max(...attempts.map((a) => a.endedAt)));

/**
 * `reported`: per table, how many blocks the sidecars say this run stored twice (lease
 * duplicates). Rows stored twice are no violation when they are reported: no more inserts
 * than reported (a drop may have removed some of those), each stored twice on every replica,
 * each tried through more than one replica.
 */
export function check(history: History, observed: Observed, reported: Record<string, number> = {}): CheckReport {
  const replicas = Object.keys(observed).sort();
  const tables = [...new Set([...history.inserts.map((i) => i.table), ...history.drops.map((d) => d.table), ...replicas.flatMap((r) => Object.keys(observed[r]!))])].sort();
  const reports = tables.map((table) => acceptReported(checkTable(table, history, observed, replicas), history, replicas, reported[table] ?? 0));
  const sum = (key: keyof CheckReport['violations']) => reports.reduce((n, r) => n + r[key].length, 0);
  const violations = { lost: sum('lost'), unexpected: sum('unexpected'), duplicated: sum('duplicated'), divergent: sum('divergent'), survivedDrop: sum('survivedDrop') };
  return { tables: reports, ok: Object.values(violations).every((n) => n === 0), violations };
}

function checkTable(table: string, history: History, observed: Observed, replicas: string[]): TableReport {
  const inserts = history.inserts.filter((i) => i.table === table);
  const drops = history.drops.filter((d) => d.table === table && !definitelyFailed(d.attempts));
  const insertOfRow = new Map<number, InsertRecord>();
  for (const insert of inserts) for (const row of insert.rows) insertOfRow.set(row, insert);

  const copies = new Map<string, Map<number, number>>();
  for (const replica of replicas) {
    const counts = new Map<number, number>();
    for (const row of observed[replica]?.[table] ?? []) counts.set(row, (counts.get(row) ?? 0) + 1);
    copies.set(replica, counts);
  }
  const holders = (row: number) => replicas.filter((r) => copies.get(r)!.has(row));

  const report: TableReport = {
    table,
    inserts: {
      acknowledged: inserts.filter((i) => acknowledgedAt(i.attempts) !== null).length,
      failed: inserts.filter((i) => definitelyFailed(i.attempts)).length,
      unknown: inserts.filter((i) => acknowledgedAt(i.attempts) === null && !definitelyFailed(i.attempts)).length,
    },
    lost: [],
    unexpected: [],
    duplicated: [],
    divergent: [],
    survivedDrop: [],
    partial: [],
    reportedDuplicates: [],
  };

  for (const insert of inserts) {
    const ackAt = acknowledgedAt(insert.attempts);
    const dropsOfIt = drops.filter((d) => d.partition === null || d.partition === insert.partition);
    // A drop that may be ordered after the insert may have removed its rows: they are no longer owed.
    const mayBeDropped = dropsOfIt.some((d) => lastEnd(d.attempts) >= firstStart(insert.attempts));
    // An acknowledged drop begun after the insert was acknowledged comes after it in LSN order.
    const mustBeDropped = ackAt !== null && dropsOfIt.some((d) => acknowledgedAt(d.attempts) !== null && firstStart(d.attempts) > ackAt);
    for (const row of insert.rows) {
      const on = holders(row);
      if (ackAt !== null && !mayBeDropped && on.length < replicas.length) {
        report.lost.push({ row, insert: insert.id, missingOn: replicas.filter((r) => !on.includes(r)) });
      }
      if (mustBeDropped && on.length > 0) report.survivedDrop.push({ row, insert: insert.id, replicas: on });
    }
    if (ackAt === null) {
      const present = insert.rows.filter((row) => holders(row).length > 0).length;
      if (present > 0 && present < insert.rows.length) report.partial.push(insert.id);
    }
  }

  const seen = new Set<number>();
  for (const replica of replicas) {
    for (const [row, count] of copies.get(replica)!) {
      seen.add(row);
      if (count > 1) report.duplicated.push({ row, replica, copies: count });
      const insert = insertOfRow.get(row);
      if (!insert || definitelyFailed(insert.attempts)) report.unexpected.push({ row, replica, insert: insert?.id ?? null });
    }
  }
  for (const row of [...seen].sort((a, b) => a - b)) {
    const on = holders(row);
    if (on.length < replicas.length) report.divergent.push({ row, presentOn: on, missingOn: replicas.filter((r) => !on.includes(r)) });
  }
  return report;
}

/** Moves the duplicated rows the sidecars reported out of the violations, when the report covers them all. */
function acceptReported(report: TableReport, history: History, replicas: string[], reported: number): TableReport {
  if (reported === 0 || report.duplicated.length === 0) return report;
  const inserts = new Map(history.inserts.filter((i) => i.table === report.table).map((i) => [i.id, i]));
  const insertOfRow = new Map<number, number>();
  for (const insert of inserts.values()) for (const row of insert.rows) insertOfRow.set(row, insert.id);
  const twice = new Map<number, Set<string>>();
  for (const d of report.duplicated) {
    const id = insertOfRow.get(d.row);
    if (id === undefined || d.copies !== 2) return report;
    twice.set(id, (twice.get(id) ?? new Set()).add(`${d.row}@${d.replica}`));
  }
  for (const [id, seen] of twice) {
    const insert = inserts.get(id)!;
    const everywhere = insert.rows.length * replicas.length === seen.size;
    const triedThroughTwo = new Set(insert.attempts.map((a) => a.replica)).size > 1;
    if (!everywhere || !triedThroughTwo) return report;
  }
  if (twice.size > reported) return report;
  return { ...report, duplicated: [], reportedDuplicates: [...twice.keys()].sort((a, b) => a - b) };
}

/** One line per table and a verdict, for the runner's text report. */
export function formatReport(report: CheckReport): string {
  const header = ['table', 'acked', 'failed', 'unknown', 'lost', 'unexpected', 'duplicated', 'divergent', 'survived drop', 'partial'];
  const rows = report.tables.map((t) => [
    t.table,
    t.inserts.acknowledged,
    t.inserts.failed,
    t.inserts.unknown,
    t.lost.length,
    t.unexpected.length,
    t.duplicated.length,
    t.divergent.length,
    t.survivedDrop.length,
    t.partial.length,
  ].map(String));
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line), report.ok ? 'PASS: nothing lost, unexpected, duplicated or divergent' : `FAIL: ${JSON.stringify(report.violations)}`].join('\n');
}
