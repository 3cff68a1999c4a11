import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { inRanges, TABLE_OP_KINDS, toRanges, voidEntry, type Digest, type EntryDraft, type EntryState, type LogEntry, type Range } from './entry.js';
import { sameEntry, validateEntry } from './validate.js';

/** Two different entries for one LSN: the one stored here and the one that arrived. */
export interface LogConflict {
  lsn: number;
  stored: LogEntry;
  received: LogEntry;
  /** Who sent the received one: a peer's name, or 'local' for this replica's own record. */
  source: string;
  at: number;
}

/** Two entries holding the same block, at least one allocated on a lease while ZooKeeper was away. */
export interface LeaseDuplicate {
  lsn: number;
  duplicateOf: number;
  blockId: string;
  table: string;
  origins: [string, string];
  at: number;
}

/** LSNs reserved for `origin` by the lease entry at `lsn`: first..last. */
export interface Lease {
  lsn: number;
  origin: string;
  first: number;
  last: number;
}

interface EntryRow {
  lsn: number;
  body: string;
  state: EntryState;
}

/**
 * The replica's local log. SQLite in WAL mode with synchronous=NORMAL: a transaction that
 * returned is in the WAL, so it survives kill -9 of the sidecar (the failure a pod sees, and
 * what invariant 1 is about); the WAL is fsynced at checkpoints, so a power loss may take the
 * last moments, which is also what ClickHouse guarantees for the parts themselves (it does
 * not fsync them). FULL cost an fsync per commit: most of the sidecar's CPU per insert. The
 * README's "Durability" section says the same to users.
 */
/** The kinds of TABLE_OP_KINDS, as an SQL list. */
const TABLE_OPS = TABLE_OP_KINDS.map((k) => `'${k}'`).join(', ');
/** An entry that still holds back what orders after it: not applied, and not a mutation already submitted. */
const UNPASSED = "state IN ('pending', 'stored') AND NOT (kind = 'mutation' AND attach_done = 1)";

export class LocalLog {
  private db: Database.Database;
  private knownWatermark = 0;
  private appliedWatermark = 0;
  /** Like appliedWatermark, but stepping over LSNs reserved by a lease and not used (yet). */
  private readableWatermark = 0;
  /** Leases the watermarks may still have to step over, by first LSN. */
  private leaseRanges: Array<Lease> = [];
  /** Leases (by their entry's LSN) closed by a later lease entry of `origin`, with the LSNs it says they used. */
  private closedLeases = new Map<number, { origin: string; used: Set<number> }>();
  /** Called after an entry became applied or voided here (quorum and read-after-LSN waits). */
  private readonly settledListeners = new Set<() => void>();

  /**
   * Statements by their text, prepared once: preparing on every call was about a third of the
   * local log's CPU per insert (profiled in issue 12).
   */
  private readonly statements = new Map<string, Database.Statement>();

  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  /**
   * `dedupWindowMs`: two entries of one block allocated further apart than this are no duplicate
   * to report (the block was sent again after the dedup window forgot it, as it may be).
   */
  constructor(
    dir: string,
    private readonly opts: { dedupWindowMs?: number } = {},
  ) {
    mkdirSync(dir, { recursive: true });
    this.db = new Database(join(dir, 'log.sqlite'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS entries (
        lsn INTEGER PRIMARY KEY,
        database TEXT NOT NULL,
        tbl TEXT NOT NULL,
        block_id TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'insert',
        bytes INTEGER NOT NULL DEFAULT 0,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        applied_at INTEGER,
        attach_floor INTEGER
      );
      CREATE TABLE IF NOT EXISTS intents (
        nonce TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS entries_state ON entries(state, lsn);
      CREATE TABLE IF NOT EXISTS block_map (
        database TEXT NOT NULL,
        tbl TEXT NOT NULL,
        partition_id TEXT NOT NULL,
        block_number INTEGER NOT NULL,
        lsn INTEGER NOT NULL,
        PRIMARY KEY (database, tbl, block_number, lsn)
      );
      CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS conflicts (
        lsn INTEGER NOT NULL,
        received TEXT NOT NULL,
        source TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (lsn, received)
      );
      CREATE INDEX IF NOT EXISTS entries_block ON entries(block_id);
      CREATE INDEX IF NOT EXISTS entries_kind ON entries(kind, lsn);
      -- What every insert asks (schemaSettledThrough): the schema changes not yet applied, however many were.
      CREATE INDEX IF NOT EXISTS entries_unapplied_schema ON entries(database, tbl, lsn) WHERE kind = 'schema' AND state IN ('pending', 'stored');
      CREATE TABLE IF NOT EXISTS lease_duplicates (
        lsn INTEGER NOT NULL,
        duplicate_of INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (lsn, duplicate_of)
      );
      CREATE TABLE IF NOT EXISTS peers (
        name TEXT PRIMARY KEY,
        applied_watermark INTEGER NOT NULL,
        max_lsn INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
    `);
    // Logs written before entries had a kind column get one.
    const columns = this.sql('PRAGMA table_info(entries)').all() as Array<{ name: string }>;
    if (!columns.some((c) => c.name === 'kind')) this.db.exec("ALTER TABLE entries ADD COLUMN kind TEXT NOT NULL DEFAULT 'insert'");
    if (!columns.some((c) => c.name === 'attach_done')) this.db.exec('ALTER TABLE entries ADD COLUMN attach_done INTEGER NOT NULL DEFAULT 0');
    for (const row of this.sql("SELECT body FROM entries WHERE kind = 'lease' ORDER BY lsn").all() as Array<{ body: string }>) this.noteLease(JSON.parse(row.body) as LogEntry);
    this.advanceWatermarks();
  }

  close(): void {
    this.db.close();
  }

  /** Called for every conflict found (after it is recorded): the sidecar counts and logs it. */
  onConflict: (conflict: LogConflict) => void = () => undefined;

  /**
   * Adds entries not yet known (void entries as voided, decommissions as applied); returns the
   * ones that were new. An entry whose LSN holds a different entry is not stored: it is recorded
   * as a conflict (an alarm), and an identical copy is ignored.
   */
  addEntries(entries: LogEntry[], state: EntryState = 'pending', source = 'local'): { added: LogEntry[]; conflicts: LogConflict[] } {
    const result = this.db.transaction(() => this.insertEntries(entries, state, source))();
    this.afterInsert(result);
    return result;
  }

  private afterInsert(result: { added: LogEntry[]; conflicts: LogConflict[] }): void {
    if (result.added.length) this.settled();
    for (const c of result.conflicts) this.onConflict(c);
  }

  private insertEntries(entries: LogEntry[], state: EntryState, source: string): { added: LogEntry[]; conflicts: LogConflict[] } {
    const insert = this.sql(
      'INSERT OR IGNORE INTO entries (lsn, database, tbl, block_id, kind, bytes, body, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const added: LogEntry[] = [];
    const conflicts: LogConflict[] = [];
    for (const e of entries) {
      const initial = e.kind === 'void' ? 'voided' : e.kind === 'decommission' || e.kind === 'lease' ? 'applied' : state;
      const r = insert.run(e.lsn, e.database, e.table, e.blockId, e.kind, e.bytes, JSON.stringify(e), initial);
      if (r.changes > 0) {
        added.push(e);
        if (e.kind === 'insert') this.noteLeaseDuplicates(e);
        if (e.kind === 'lease') this.noteLease(e);
      } else {
        const conflict = this.checkSame(e, source);
        if (conflict) conflicts.push(conflict);
      }
    }
    return { added, conflicts };
  }

  /**
   * Two entries with one block ID are a duplicate the allocator could not see: one of them was
   * allocated on a lease while ZooKeeper was away, and the insert was sent to another replica
   * too. Every replica finds the same pairs once it holds both entries.
   */
  private noteLeaseDuplicates(e: LogEntry): void {
    const window = this.opts.dedupWindowMs ?? Number.MAX_SAFE_INTEGER;
    for (const other of this.holdersOf(e.blockId)) {
      if (other.lsn === e.lsn || !(e.leased || other.leased) || Math.abs(other.allocatedAtMs - e.allocatedAtMs) > window) continue;
      this.sql('INSERT OR IGNORE INTO lease_duplicates (lsn, duplicate_of, at) VALUES (?, ?, ?)').run(Math.max(e.lsn, other.lsn), Math.min(e.lsn, other.lsn), Date.now());
    }
  }

  /** Insert entries (not voided) that hold `blockId`, with when and how they were allocated. */
  holdersOf(blockId: string): Array<{ lsn: number; leased: boolean; allocatedAtMs: number; state: EntryState }> {
    const rows = this.sql("SELECT lsn, body, state FROM entries WHERE block_id = ? AND kind = 'insert' AND state != 'voided'").all(blockId) as EntryRow[];
    return rows.map((r) => {
      const entry = JSON.parse(r.body) as LogEntry;
      return { lsn: r.lsn, leased: entry.leased === true, allocatedAtMs: entry.allocatedAtMs, state: r.state };
    });
  }

  /** Cross-replica duplicates from lease allocations, both entries still standing, oldest first. */
  leaseDuplicates(limit = 1000): LeaseDuplicate[] {
    const rows = this.sql(
      `SELECT d.lsn, d.duplicate_of AS duplicateOf, d.at, a.body AS a, b.body AS b FROM lease_duplicates d
       JOIN entries a ON a.lsn = d.lsn AND a.state != 'voided' JOIN entries b ON b.lsn = d.duplicate_of AND b.state != 'voided'
       ORDER BY d.lsn LIMIT ?`,
    ).all(limit) as Array<{ lsn: number; duplicateOf: number; at: number; a: string; b: string }>;
    return rows.map((r) => {
      const a = JSON.parse(r.a) as LogEntry;
      const b = JSON.parse(r.b) as LogEntry;
      return { lsn: r.lsn, duplicateOf: r.duplicateOf, blockId: a.blockId, table: `${a.database}.${a.table}`, origins: [a.origin, b.origin], at: r.at };
    });
  }

  /** LSNs of first..last that hold an entry here. */
  recordedIn(first: number, last: number): number[] {
    return (this.sql('SELECT lsn FROM entries WHERE lsn BETWEEN ? AND ? ORDER BY lsn').all(first, last) as Array<{ lsn: number }>).map((r) => r.lsn);
  }

  /**
   * What `origin`'s leases leave unsettled here: every unrecorded LSN of a lease it did not close,
   * and the LSNs a closing said it used that have not arrived. A decommission voids them.
   */
  leaseOrphans(origin: string): number[] {
    const orphans: number[] = [];
    // Leases the watermarks have passed (no longer listed) leave nothing unsettled.
    for (const lease of this.leaseRanges) {
      if (lease.origin !== origin) continue;
      const closed = this.closedLeases.get(lease.lsn);
      const unrecorded = this.unrecordedIn(lease.first, lease.last);
      orphans.push(...(closed?.origin === origin ? unrecorded.filter((lsn) => closed.used.has(lsn)) : this.leaseClosed(lease) ? [] : unrecorded));
    }
    return orphans;
  }

  /** LSNs of first..last that hold no entry here. */
  unrecordedIn(first: number, last: number): number[] {
    const held = new Set(this.recordedIn(first, last));
    const free: number[] = [];
    for (let lsn = first; lsn <= last; lsn++) if (!held.has(lsn)) free.push(lsn);
    return free;
  }

  /** The newest entry that is not a lease or a void (0: none): what a lease below it holds back. */
  maxWrittenLsn(): number {
    return (this.sql(`SELECT COALESCE(MAX(lsn), 0) AS m FROM entries WHERE kind IN ('insert', 'decommission', ${TABLE_OPS})`).get() as { m: number }).m;
  }

  /** The newest operation (drop, truncate, mutation, schema change) of any table known here (0: none). */
  newestTableOp(): number {
    return (this.sql(`SELECT COALESCE(MAX(lsn), 0) AS m FROM entries WHERE kind IN (${TABLE_OPS})`).get() as { m: number }).m;
  }

  /** The newest operation (drop, truncate, mutation, schema change) of a table known here, below `below` (0: none). */
  newestBarrier(database: string, table: string, below = Number.MAX_SAFE_INTEGER): number {
    return (
      this.sql(`SELECT COALESCE(MAX(lsn), 0) AS m FROM entries WHERE database = ? AND tbl = ? AND kind IN (${TABLE_OPS}) AND lsn < ?`).get(database, table, below) as {
        m: number;
      }
    ).m;
  }

  /** Records a conflict when `received` differs from the entry stored for its LSN. */
  private checkSame(received: LogEntry, source: string): LogConflict | undefined {
    const stored = this.get(received.lsn)?.entry;
    if (!stored || sameEntry(stored, received)) return undefined;
    const at = Date.now();
    this.sql('INSERT OR IGNORE INTO conflicts (lsn, received, source, at) VALUES (?, ?, ?, ?)').run(received.lsn, JSON.stringify(received), source, at);
    return { lsn: received.lsn, stored, received, source, at };
  }

  /** Every conflict recorded (newest first, at most `limit`): they stay until an operator looks into the log. */
  conflicts(limit = 100): LogConflict[] {
    const rows = this.sql('SELECT lsn, received, source, at FROM conflicts ORDER BY at DESC, rowid DESC LIMIT ?').all(limit) as Array<{ lsn: number; received: string; source: string; at: number }>;
    return rows.map((r) => ({ lsn: r.lsn, stored: this.get(r.lsn)!.entry, received: JSON.parse(r.received) as LogEntry, source: r.source, at: r.at }));
  }

  /** Members named by decommission entries of the log. */
  decommissionedMembers(): string[] {
    const rows = this.sql("SELECT body FROM entries WHERE kind = 'decommission'").all() as Array<{ body: string }>;
    return rows.map((r) => (JSON.parse(r.body) as LogEntry).member ?? '').filter(Boolean);
  }

  /**
   * Before allocating, the origin records what it is about to allocate for, under the
   * request's nonce: after a crash, the allocator's window says (by nonce) what was allocated.
   */
  recordIntent(nonce: string, drafts: EntryDraft[]): void {
    // Every peer validates the entry it receives: one it would refuse (a table name that cannot be
    // a path, say) is refused here, before an LSN is allocated for it.
    // Its LSN is not known yet: the highest possible one stands in, above every LSN it may name.
    for (const d of drafts) validateEntry({ ...d.entry, lsn: Number.MAX_SAFE_INTEGER, allocatedAtMs: 0, barrier: 0 }, { members: new Set([d.entry.origin, d.entry.member ?? d.entry.origin]) });
    this.sql('INSERT INTO intents (nonce, body, created_at) VALUES (?, ?, ?)').run(nonce, JSON.stringify(drafts), Date.now());
  }

  intents(): Array<{ nonce: string; drafts: EntryDraft[]; createdAt: number }> {
    const rows = this.sql('SELECT nonce, body, created_at AS createdAt FROM intents ORDER BY created_at').all() as Array<{ nonce: string; body: string; createdAt: number }>;
    return rows.map((r) => ({ nonce: r.nonce, drafts: JSON.parse(r.body) as EntryDraft[], createdAt: r.createdAt }));
  }

  /**
   * Whether an intent other than `nonce` holds `blockId`: an insert of that block is waiting for
   * its allocation (or for recovery), and may still get an LSN through ZooKeeper.
   */
  intentHolds(blockId: string, nonce: string): boolean {
    const rows = this.sql('SELECT nonce, body FROM intents WHERE nonce != ? AND instr(body, ?) > 0').all(nonce, JSON.stringify(blockId)) as Array<{ nonce: string; body: string }>;
    return rows.some((r) => (JSON.parse(r.body) as EntryDraft[]).some((d) => d.entry.blockId === blockId));
  }

  /**
   * The intent's allocated entries become log entries and the intent goes, in one transaction.
   * An LSN that already holds another entry (not this origin's own) is returned as a conflict:
   * the caller must not acknowledge that entry as stored.
   */
  resolveIntent(nonce: string, entries: LogEntry[], state: EntryState = 'stored'): { added: LogEntry[]; conflicts: LogConflict[] } {
    const result = this.db.transaction(() => {
      const inserted = this.insertEntries(entries, state, 'local');
      this.sql('DELETE FROM intents WHERE nonce = ?').run(nonce);
      return inserted;
    })();
    this.afterInsert(result);
    return result;
  }

  /** Checks an entry this replica would record against the one its LSN holds (recovery's check). */
  checkOwn(entry: LogEntry): LogConflict | undefined {
    const conflict = this.checkSame(entry, 'local');
    if (conflict) this.onConflict(conflict);
    return conflict;
  }

  listEntries(q: { fromLsn: number; toLsn: number; table: string; state: string; limit: number }): Array<{ entry: LogEntry; state: EntryState; attempts: number; lastError: string }> {
    const where = ['lsn >= ?'];
    const args: Array<string | number> = [q.fromLsn];
    if (q.toLsn > 0) {
      where.push('lsn <= ?');
      args.push(q.toLsn);
    }
    if (q.table) {
      const dot = q.table.indexOf('.');
      where.push('database = ? AND tbl = ?');
      args.push(dot > 0 ? q.table.slice(0, dot) : 'default', dot > 0 ? q.table.slice(dot + 1) : q.table);
    }
    if (q.state) {
      where.push('state = ?');
      args.push(q.state);
    }
    const rows = this.sql(`SELECT body, state, attempts, last_error AS lastError FROM entries WHERE ${where.join(' AND ')} ORDER BY lsn LIMIT ?`)
      .all(...args, q.limit) as Array<{ body: string; state: EntryState; attempts: number; lastError: string | null }>;
    return rows.map((r) => ({ entry: JSON.parse(r.body) as LogEntry, state: r.state, attempts: r.attempts, lastError: r.lastError ?? '' }));
  }

  /** How long the oldest entry not applied here has waited since it was allocated (seconds); 0 when none waits. */
  applyLagSeconds(): number {
    const row = this.sql("SELECT body FROM entries WHERE state IN ('pending', 'stored') ORDER BY lsn LIMIT 1").get() as { body: string } | undefined;
    return row ? Math.max(0, (Date.now() - (JSON.parse(row.body) as LogEntry).allocatedAtMs) / 1000) : 0;
  }

  getMeta(key: string): string | undefined {
    return (this.sql('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  /** Every LSN applied or voided here (for a snapshot), as ranges. */
  appliedRanges(): Range[] {
    const rows = this.sql("SELECT lsn FROM entries WHERE state IN ('applied', 'voided') ORDER BY lsn").all() as Array<{ lsn: number }>;
    return toRanges(rows.map((r) => r.lsn));
  }

  /** Every entry with an LSN up to `maxLsn`, oldest first. */
  *entriesUpTo(maxLsn: number): IterableIterator<LogEntry> {
    for (const row of this.db.prepare('SELECT body FROM entries WHERE lsn <= ? ORDER BY lsn').iterate(maxLsn) as IterableIterator<{ body: string }>) {
      yield JSON.parse(row.body) as LogEntry;
    }
  }

  /** A clone's block map: local block -> every LSN the attached part covers. */
  mapBlock(database: string, table: string, partitionId: string, block: number, lsns: number[]): void {
    const insert = this.sql('INSERT OR IGNORE INTO block_map (database, tbl, partition_id, block_number, lsn) VALUES (?, ?, ?, ?, ?)');
    this.db.transaction(() => {
      for (const lsn of lsns) insert.run(database, table, partitionId, block, lsn);
    })();
  }

  /**
   * A clone's log: the snapshot's entries, applied where the snapshot covers them (whatever
   * state gossip may have given them meanwhile), pending otherwise.
   */
  loadSnapshotEntries(entries: LogEntry[], applied: Range[]): void {
    const covered = (lsn: number) => inRanges(applied, lsn);
    this.db.transaction(() => {
      this.insertEntries(entries.filter((e) => !covered(e.lsn)), 'pending', 'snapshot');
      this.insertEntries(entries.filter((e) => covered(e.lsn) && e.kind !== 'void'), 'applied', 'snapshot');
      this.insertEntries(entries.filter((e) => e.kind === 'void'), 'voided', 'snapshot');
      const mark = this.sql("UPDATE entries SET state = 'applied' WHERE lsn = ? AND state IN ('pending', 'stored')");
      for (const e of entries) if (covered(e.lsn) && e.kind !== 'void') mark.run(e.lsn);
    })();
    this.settled();
  }

  dropIntent(nonce: string): void {
    this.sql('DELETE FROM intents WHERE nonce = ?').run(nonce);
  }

  /** LSNs this replica voided as their origin. */
  ownVoids(origin: string): number[] {
    const rows = this.sql("SELECT lsn, body FROM entries WHERE state = 'voided'").all() as Array<{ lsn: number; body: string }>;
    return rows.filter((r) => (JSON.parse(r.body) as LogEntry).origin === origin).map((r) => r.lsn);
  }

  /** Voids LSNs that have no entry here; an LSN with an entry is never voided. Returns the voided ones. */
  voidUnrecorded(lsns: number[], origin: string): LogEntry[] {
    // An LSN that has an entry is left alone (INSERT OR IGNORE): a void never overrides, and is
    // no conflict here either, since the caller asks only about LSNs it found unrecorded.
    const result = this.db.transaction(() => {
      const insert = this.sql("INSERT OR IGNORE INTO entries (lsn, database, tbl, block_id, kind, bytes, body, state) VALUES (?, '', '', '', 'void', 0, ?, 'voided')");
      return lsns.map((lsn) => voidEntry(lsn, origin)).filter((e) => insert.run(e.lsn, JSON.stringify(e)).changes > 0);
    })();
    if (result.length) this.settled();
    return result;
  }

  /** ATTACH is about to run for `lsn` with this block floor: a retry may find the part already attached. */
  markAttaching(lsn: number, floor: number): void {
    this.sql('UPDATE entries SET attach_floor = ? WHERE lsn = ?').run(floor, lsn);
  }

  /** What markAttaching recorded is void: the statement was refused, so nothing ran. */
  clearAttaching(lsn: number): void {
    this.sql('UPDATE entries SET attach_floor = NULL WHERE lsn = ?').run(lsn);
  }

  /** ATTACH PART succeeded for `lsn`: from now on its part is only looked for, never attached again. */
  markAttachDone(lsn: number): void {
    this.sql('UPDATE entries SET attach_done = 1 WHERE lsn = ?').run(lsn);
  }

  attachDone(lsn: number): boolean {
    const row = this.sql('SELECT attach_done AS d FROM entries WHERE lsn = ?').get(lsn) as { d: number } | undefined;
    return row?.d === 1;
  }

  attachFloor(lsn: number): number | null {
    const row = this.sql('SELECT attach_floor AS f FROM entries WHERE lsn = ?').get(lsn) as { f: number | null } | undefined;
    return row?.f ?? null;
  }

  /**
   * Why `entry` may not be applied yet, in LSN order relative to the table's operations (drops,
   * truncates, mutations, schema changes): an insert waits for its barrier and for every known operation of its
   * table below it; an operation waits until every LSN below it is known and every entry of its
   * table below it is applied. A mutation counts as passed once submitted to ClickHouse (which
   * orders every part attached later after it), though it is applied only once done.
   * Undefined when it may be applied now.
   */
  blockedBy(entry: LogEntry): string | undefined {
    // A database's own CREATE or DROP orders against every table of it; a table's entries against it.
    const unappliedBelow = (kinds: string) =>
      (entry.table === ''
        ? (this.sql(`SELECT MIN(lsn) AS lsn FROM entries WHERE database = ? AND lsn < ? AND ${UNPASSED} AND kind IN (${kinds})`).get(entry.database, entry.lsn) as { lsn: number | null })
        : (this.sql(`SELECT MIN(lsn) AS lsn FROM entries WHERE database = ? AND (tbl = ? OR (tbl = '' AND kind = 'schema')) AND lsn < ? AND ${UNPASSED} AND kind IN (${kinds})`)
            .get(entry.database, entry.table, entry.lsn) as { lsn: number | null })
      ).lsn;
    if (entry.kind === 'insert') {
      if (entry.barrier > 0) {
        const state = this.get(entry.barrier)?.state;
        if (state !== 'applied' && state !== 'voided' && !this.attachDone(entry.barrier)) return `waits for LSN ${entry.barrier} (an operation on its table) to be applied`;
      }
      const op = unappliedBelow(TABLE_OPS);
      return op === null ? undefined : `waits for LSN ${op} (an operation on its table) to be applied`;
    }
    if (TABLE_OP_KINDS.includes(entry.kind)) {
      if (entry.kind === 'mutation' && this.attachDone(entry.lsn)) return undefined;
      if (this.knownWatermark < entry.lsn - 1) return `waits for LSN ${this.knownWatermark + 1} to be known (it may write to this table)`;
      const before = unappliedBelow(`'insert', ${TABLE_OPS}`);
      return before === null ? undefined : `waits for LSN ${before} of the same table to be applied`;
    }
    return undefined;
  }

  /** Tables ("db.t"; "db." for a database's own CREATE or DROP) with a table operation not yet applied (or submitted) here. */
  tablesWithPendingOps(): Set<string> {
    const rows = this.sql(`SELECT DISTINCT database, tbl FROM entries WHERE ${UNPASSED} AND kind IN (${TABLE_OPS})`).all() as Array<{ database: string; tbl: string }>;
    return new Set(rows.map((r) => `${r.database}.${r.tbl}`));
  }

  /**
   * Every schema change of the table (or of its database) applied here lies at or below the
   * number returned, and every one at or below it is applied: the schema a part staged now has.
   */
  schemaSettledThrough(database: string, table: string): number {
    const row = this.sql(`SELECT MIN(lsn) AS lsn FROM entries INDEXED BY entries_unapplied_schema WHERE kind = 'schema' AND state IN ('pending', 'stored') AND database = ? AND tbl IN (?, '')`).get(database, table) as { lsn: number | null };
    return Math.min(this.knownWatermark, row.lsn === null ? Number.MAX_SAFE_INTEGER : row.lsn - 1);
  }

  /** Schema changes of the table (or of its database) known here with an LSN in (after, below). */
  schemaChangesBetween(database: string, table: string, after: number, below: number): number[] {
    const rows = this.sql(`SELECT lsn FROM entries WHERE kind = 'schema' AND database = ? AND (tbl = ? OR tbl = '') AND lsn > ? AND lsn < ? ORDER BY lsn`).all(database, table, after, below) as Array<{ lsn: number }>;
    return rows.map((r) => r.lsn);
  }

  /** Mutations submitted to ClickHouse here and not yet done: a snapshot waits for them. */
  runningMutations(): LogEntry[] {
    const rows = this.sql("SELECT body FROM entries WHERE kind = 'mutation' AND state IN ('pending', 'stored') AND attach_done = 1 ORDER BY lsn").all() as Array<{ body: string }>;
    return rows.map((r) => JSON.parse(r.body) as LogEntry);
  }

  isBlockMapped(database: string, table: string, block: number): boolean {
    return Boolean(this.sql('SELECT 1 FROM block_map WHERE database = ? AND tbl = ? AND block_number = ?').get(database, table, block));
  }

  get(lsn: number): { entry: LogEntry; state: EntryState } | undefined {
    const row = this.sql('SELECT lsn, body, state FROM entries WHERE lsn = ?').get(lsn) as EntryRow | undefined;
    return row ? { entry: JSON.parse(row.body) as LogEntry, state: row.state } : undefined;
  }

  setState(lsn: number, state: EntryState): void {
    this.sql('UPDATE entries SET state = ? WHERE lsn = ?').run(state, lsn);
    if (state === 'applied' || state === 'voided') this.settled();
  }

  /** Calls `listener` each time an entry becomes applied or voided here, until the returned function is called. */
  onSettled(listener: () => void): () => void {
    this.settledListeners.add(listener);
    return () => this.settledListeners.delete(listener);
  }

  private settled(): void {
    this.advanceWatermarks();
    for (const listener of this.settledListeners) {
      // A waiter's failure is its own: the entry's change is already committed.
      try {
        listener();
      } catch {
        // ignored
      }
    }
  }

  /** Those of `lsns` that are applied here (an entry no longer stored is applied if the watermark passed it). */
  appliedOf(lsns: number[]): number[] {
    return lsns.filter((lsn) => {
      const row = this.get(lsn);
      return row ? row.state === 'applied' : lsn <= this.appliedWatermark;
    });
  }

  /** Entries not applied here whose last try failed, oldest first: what an operator looks into. */
  failingEntries(limit = 20): Array<{ lsn: number; kind: string; table: string; attempts: number; error: string }> {
    const rows = this.sql(
      "SELECT lsn, kind, database, tbl, attempts, last_error AS error FROM entries WHERE state IN ('pending', 'stored') AND last_error IS NOT NULL ORDER BY lsn LIMIT ?",
    ).all(limit) as Array<{ lsn: number; kind: string; database: string; tbl: string; attempts: number; error: string }>;
    return rows.map((r) => ({ lsn: r.lsn, kind: r.kind, table: r.tbl ? `${r.database}.${r.tbl}` : r.database, attempts: r.attempts, error: r.error }));
  }

  /** The last failure recorded for `lsn` here (null: none). */
  lastError(lsn: number): string | null {
    return (this.sql('SELECT last_error AS e FROM entries WHERE lsn = ?').get(lsn) as { e: string | null } | undefined)?.e ?? null;
  }

  recordFailure(lsn: number, error: string): void {
    this.sql('UPDATE entries SET attempts = attempts + 1, last_error = ? WHERE lsn = ?').run(error, lsn);
  }

  /** The entry is attached as local block `blockNumber`; both facts land in one transaction. */
  markApplied(entry: LogEntry, blockNumber: number): void {
    this.db.transaction(() => {
      this.sql('INSERT OR REPLACE INTO block_map (database, tbl, partition_id, block_number, lsn) VALUES (?, ?, ?, ?, ?)')
        .run(entry.database, entry.table, entry.partitionId, blockNumber, entry.lsn);
      this.sql("UPDATE entries SET state = 'applied', applied_at = ? WHERE lsn = ?").run(Date.now(), entry.lsn);
    })();
    this.settled();
  }

  /** LSNs this replica still has to apply, oldest first (bodies are read one by one, when applied). */
  unappliedLsns(limit = 1000): number[] {
    const rows = this.sql("SELECT lsn FROM entries WHERE state IN ('pending', 'stored') ORDER BY lsn LIMIT ?").all(limit) as Array<{ lsn: number }>;
    return rows.map((r) => r.lsn);
  }

  countUnapplied(): { entries: number; bytes: number } {
    return this.sql("SELECT count(*) AS entries, COALESCE(SUM(bytes), 0) AS bytes FROM entries WHERE state IN ('pending', 'stored')")
      .get() as { entries: number; bytes: number };
  }

  blockMap(database: string, table: string): Array<{ partitionId: string; blockNumber: number; lsn: number }> {
    return this.sql('SELECT partition_id AS partitionId, block_number AS blockNumber, lsn FROM block_map WHERE database = ? AND tbl = ? ORDER BY block_number')
      .all(database, table) as Array<{ partitionId: string; blockNumber: number; lsn: number }>;
  }

  maxLsn(): number {
    return (this.sql('SELECT COALESCE(MAX(lsn), 0) AS m FROM entries').get() as { m: number }).m;
  }

  private advanceWatermarks(): void {
    const settled = (state: EntryState) => state === 'applied' || state === 'voided';
    this.knownWatermark = this.advance(this.knownWatermark, () => true, 'closed');
    this.appliedWatermark = this.advance(this.appliedWatermark, settled, 'closed');
    // A read that waits for an LSN needs every entry below it applied, not the LSNs a lease keeps
    // in reserve: one used later is a later write.
    this.readableWatermark = this.advance(Math.max(this.readableWatermark, this.appliedWatermark), settled, 'reserved');
    const low = Math.min(this.knownWatermark, this.appliedWatermark);
    if (this.leaseRanges.length && this.leaseRanges[0]!.last <= low) {
      for (const l of this.leaseRanges) if (l.last <= low) this.closedLeases.delete(l.lsn);
      this.leaseRanges = this.leaseRanges.filter((l) => l.last > low);
    }
  }

  /**
   * From `start`, over the rows that `counts` takes and the LSNs without a row that a lease
   * settles: 'closed', those its owner closed unused; 'reserved', any its lease reserves.
   */
  private advance(start: number, counts: (state: EntryState) => boolean, skip: 'closed' | 'reserved'): number {
    const rows = this.sql('SELECT lsn, state FROM entries WHERE lsn > ? ORDER BY lsn LIMIT 10000');
    let w = start;
    for (;;) {
      const batch = rows.all(w) as Array<{ lsn: number; state: EntryState }>;
      for (const { lsn, state } of batch) {
        if (lsn > w + 1) {
          w = this.settledByLeases(w + 1, lsn - 1, skip);
          if (w < lsn - 1) return w;
        }
        if (!counts(state)) return w;
        w = lsn;
      }
      if (batch.length < 10000) return w;
    }
  }

  /** The last LSN of from..to up to which every LSN without a row is settled by a lease (from - 1: not even `from`). */
  private settledByLeases(from: number, to: number, skip: 'closed' | 'reserved'): number {
    let at = from;
    while (at <= to) {
      const lease = this.leaseRanges.find((l) => at >= l.first && at <= l.last);
      if (!lease) break;
      const end = Math.min(to, lease.last);
      if (skip === 'reserved') {
        at = end + 1;
        continue;
      }
      const closed = this.closedLeases.get(lease.lsn);
      if (!closed || closed.origin !== lease.origin) break;
      while (at <= end && !closed.used.has(at)) at++;
      if (at <= end) break;
    }
    return at - 1;
  }

  /** Keeps what a lease entry says for the watermarks: the LSNs it reserves, the leases it closes. */
  private noteLease(e: LogEntry): void {
    if (e.leaseSize) {
      this.leaseRanges.push({ lsn: e.lsn, origin: e.origin, first: e.lsn + 1, last: e.lsn + e.leaseSize });
      this.leaseRanges.sort((a, b) => a.first - b.first);
    }
    const used = new Set(e.usedLsns ?? []);
    for (const lease of e.closesLeases ?? []) this.closedLeases.set(lease, { origin: e.origin, used });
  }

  /**
   * `origin`'s leases that no later lease entry of its own closed, oldest first, whenever their
   * entries were recorded (one that recovery recorded after a crash included). Leases the
   * watermarks have passed are settled, closed or not, and are not listed.
   */
  openLeases(origin: string): Lease[] {
    return this.leaseRanges.filter((l) => l.origin === origin && !this.leaseClosed(l)).sort((a, b) => a.lsn - b.lsn);
  }

  /** Whether a later lease entry of the same origin closed the lease whose entry is at `lsn`. */
  leaseClosed(lease: Lease): boolean {
    return this.closedLeases.get(lease.lsn)?.origin === lease.origin || lease.last < Math.min(this.knownWatermark, this.appliedWatermark);
  }

  watermarks(): { known: number; applied: number; readable: number } {
    return { known: this.knownWatermark, applied: this.appliedWatermark, readable: this.readableWatermark };
  }

  digest(from: string): Digest {
    const above = this.sql('SELECT lsn FROM entries WHERE lsn > ? ORDER BY lsn').all(this.knownWatermark) as Array<{ lsn: number }>;
    return {
      from,
      maxLsn: this.maxLsn(),
      knownWatermark: this.knownWatermark,
      knownAbove: toRanges(above.map((r) => r.lsn)),
      appliedWatermark: this.appliedWatermark,
    };
  }

  /**
   * Entries this replica knows that a peer with `digest` lacks, oldest first: at most `limit`
   * of them and about `maxBytes` (their stored JSON, larger than their protobuf form), but
   * always at least one, so that a large entry still travels.
   */
  missingFrom(digest: Digest, limit: number, maxBytes = Infinity): LogEntry[] {
    const rows = this.sql('SELECT lsn, body FROM entries WHERE lsn > ? ORDER BY lsn')
      .iterate(Number(digest.knownWatermark)) as IterableIterator<{ lsn: number; body: string }>;
    const out: LogEntry[] = [];
    let bytes = 0;
    for (const row of rows) {
      if (digest.knownAbove.some((r) => row.lsn >= Number(r.first) && row.lsn <= Number(r.last))) continue;
      if (out.length > 0 && bytes + row.body.length > maxBytes) break;
      bytes += row.body.length;
      out.push(JSON.parse(row.body) as LogEntry);
      if (out.length >= limit) break;
    }
    return out;
  }

  private lastPeerProgress = new Map<string, string>();

  setPeerProgress(name: string, appliedWatermark: number, maxLsn: number): void {
    const key = `${appliedWatermark}:${maxLsn}`;
    if (this.lastPeerProgress.get(name) === key) return;
    this.lastPeerProgress.set(name, key);
    this.sql(
        `INSERT INTO peers (name, applied_watermark, max_lsn, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET applied_watermark = MAX(applied_watermark, excluded.applied_watermark),
           max_lsn = MAX(max_lsn, excluded.max_lsn), updated_at = excluded.updated_at`,
      )
      .run(name, appliedWatermark, maxLsn, Date.now());
  }

  peerProgress(): Array<{ name: string; appliedWatermark: number; maxLsn: number; updatedAt: number }> {
    return this.sql('SELECT name, applied_watermark AS appliedWatermark, max_lsn AS maxLsn, updated_at AS updatedAt FROM peers ORDER BY name')
      .all() as Array<{ name: string; appliedWatermark: number; maxLsn: number; updatedAt: number }>;
  }
}
