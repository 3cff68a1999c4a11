export interface FileInfo {
  name: string;
  size: number;
  sha256: string;
}

/**
 * 'insert': a part to attach. 'drop_partition' and 'truncate': applied in LSN order relative to
 * the table's inserts. 'void': an LSN its origin allocated but could not record.
 * 'decommission': `member` leaves the shard for good (durable, so a replica that was away learns
 * it as it learns any entry; never a gossip rumour). 'lease': the `leaseSize` LSNs after it are
 * reserved for its origin, to insert on while ZooKeeper is away; each is later used or voided
 * by that origin. 'mutation': an `ALTER TABLE ... UPDATE/DELETE/CLEAR COLUMN` or lightweight
 * `DELETE FROM` (`statement`), run by every replica after the table's entries below it and
 * before those above it, so that it changes the same rows everywhere. 'schema': a CREATE / DROP /
 * RENAME / ALTER TABLE (its definition) or CREATE / DROP DATABASE (`statement`, `table` '' for a
 * database's own), ordered the same way.
 */
export type EntryKind = 'insert' | 'drop_partition' | 'truncate' | 'void' | 'decommission' | 'lease' | 'mutation' | 'schema';
export const ENTRY_KINDS: EntryKind[] = ['insert', 'drop_partition', 'truncate', 'void', 'decommission', 'lease', 'mutation', 'schema'];
/** Entries that order a table's inserts: nothing of the table above one is applied before it, nothing below after it. */
export const TABLE_OP_KINDS: EntryKind[] = ['drop_partition', 'truncate', 'mutation', 'schema'];

/** A replication log entry: what every replica must apply. Immutable once allocated. */
export interface LogEntry {
  lsn: number;
  kind: EntryKind;
  database: string;
  table: string;
  partitionId: string;
  blockId: string;
  /** The part's name on the origin when it was staged; only used as the name under detached/. */
  partName: string;
  /** SHA-256 of the part's checksums.txt: how the part is recognised after ATTACH renames it. */
  checksumsSha256: string;
  rows: number;
  bytes: number;
  files: FileInfo[];
  origin: string;
  allocatedAtMs: number;
  /** Inserts: a DROP PARTITION / TRUNCATE of the same table to apply first (0: none). */
  barrier: number;
  /** drop_partition: the partition literal in canonical form (canonicalPartition), never raw SQL. */
  partition: string;
  /** decommission: the member that leaves the shard. */
  member?: string;
  /** lease: how many LSNs after this one are reserved for its origin (0: it only closes leases). */
  leaseSize?: number;
  /**
   * lease: earlier leases of the same origin (the LSNs of their entries) that this one closes. Of
   * their reserved LSNs, those in `usedLsns` hold entries (inserts, or voids of inserts that
   * failed) and every other one is void: one entry settles a whole lease, not one void per LSN.
   */
  closesLeases?: number[];
  usedLsns?: number[];
  /**
   * mutation and schema: the statement every replica runs, in canonical form (parseMutation,
   * parseSchema): names quoted, no comment, no second statement, no setting.
   */
  statement?: string;
  /** insert: allocated on its origin's lease while ZooKeeper was away (deduplicated only against what its origin knew). */
  leased?: boolean;
}

/**
 * An entry that carries no part (a void, a drop, a truncate, a decommission) before its LSN is
 * known: every part field empty, the rest from `fields`.
 */
export function partlessEntry(kind: Exclude<EntryKind, 'insert'>, origin: string, fields: Partial<Pick<LogEntry, 'database' | 'table' | 'blockId' | 'partition' | 'member' | 'leaseSize' | 'closesLeases' | 'usedLsns' | 'statement'>> = {}): EntryDraft['entry'] {
  return {
    kind,
    database: '',
    table: '',
    partitionId: '',
    blockId: '',
    partName: '',
    checksumsSha256: '',
    rows: 0,
    bytes: 0,
    files: [],
    origin,
    partition: '',
    ...fields,
  };
}

export function voidEntry(lsn: number, origin: string): LogEntry {
  return { ...partlessEntry('void', origin), lsn, allocatedAtMs: Date.now(), barrier: 0 };
}

/** An insert's entry before its LSN is known: what recovery needs to finish or drop it. */
export interface EntryDraft {
  entry: Omit<LogEntry, 'lsn' | 'allocatedAtMs' | 'barrier'>;
  /** The part's copy, waiting under pending/ for its LSN ('' for entries without a part). */
  dir: string;
}

export type EntryState = 'pending' | 'stored' | 'applied' | 'voided';

export interface Range {
  first: number;
  last: number;
}

/** What a replica tells a peer so the peer can send what is missing. */
export interface Digest {
  from: string;
  maxLsn: number;
  /** Every LSN <= knownWatermark is known here; `knownAbove` lists the known LSNs above it. */
  knownWatermark: number;
  knownAbove: Range[];
  appliedWatermark: number;
}

export function toRanges(sortedLsns: number[]): Range[] {
  const ranges: Range[] = [];
  for (const lsn of sortedLsns) {
    const last = ranges[ranges.length - 1];
    if (last && last.last + 1 === lsn) last.last = lsn;
    else ranges.push({ first: lsn, last: lsn });
  }
  return ranges;
}

export function inRanges(ranges: Range[], lsn: number): boolean {
  return ranges.some((r) => lsn >= r.first && lsn <= r.last);
}
