import { canonicalPartition, MAX_PARTITION_TEXT } from '../clickhouse/partition.js';
import { ChorusError } from '../core/errors.js';
import { assertSafeFileName, assertSafeName } from '../parts/files.js';
import { MAX_LEASE_SIZE } from '../allocator/window.js';
import { quoteIdent, quoteQualified } from '../clickhouse/http.js';
import { mutationStatement, parseMutation, parseSchema, schemaStatement } from '../insert/parse.js';
import { checkCreateQuery } from '../clickhouse/catalog.js';
import { ENTRY_KINDS, type EntryKind, type FileInfo, type LogEntry } from './entry.js';

/**
 * Bounds of one entry. A wide part of a table of a few thousand columns stays below them; what
 * matters is that one entry always fits in one gossip message (gRPC refuses messages above
 * 4 MiB), hence `entryBytes` on its JSON form (larger than its protobuf form). The origin
 * checks its own entries against the same bounds before allocating (LocalLog.recordIntent), so
 * an insert beyond them is refused to its client rather than stalling replication.
 */
export const ENTRY_LIMITS = {
  filesPerPart: 10_000,
  entryBytes: 3 * 1024 * 1024,
  fileBytes: 2 ** 44,
  partBytes: 2 ** 46,
  rows: 2 ** 48,
  blockIdLength: 512,
} as const;

const SHA256 = /^[0-9a-f]{64}$/;
// ClickHouse's partition IDs: `all`, numbers (negative ones too), hex hashes, `-`-joined tuples.
const PARTITION_ID = /^[A-Za-z0-9_-]{1,255}$/;
const BARRIER_PREFIX = '!barrier:';

export interface EntryContext {
  /** Every configured member of the shard, this replica included: the only possible origins. */
  members: ReadonlySet<string>;
}

function refuse(what: string): never {
  throw new ChorusError('INVALID_ENTRY', what);
}

function text(raw: Record<string, unknown>, field: string): string {
  const v = raw[field] ?? '';
  if (typeof v !== 'string') refuse(`${field} is not a string`);
  return v;
}

/** A non-negative safe integer up to `max`; the wire may carry it as a number or a decimal string. */
function count(raw: Record<string, unknown>, field: string, max: number): number {
  const v = raw[field] ?? 0;
  const n = typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > max) refuse(`${field} ${JSON.stringify(v)} is not an integer in 0..${max}`);
  return n;
}

/** Leases one lease entry may close (a replica closes its older leases with its next one). */
export const MAX_CLOSED_LEASES = 64;

/** A list of distinct LSNs below `below`, sorted; absent is empty. */
function lsnList(raw: Record<string, unknown>, field: string, max: number, below: number): number[] {
  const v = raw[field] ?? [];
  if (!Array.isArray(v)) refuse(`${field} is not a list`);
  if (v.length > max) refuse(`${field} lists ${v.length} LSNs (at most ${max})`);
  const lsns = v.map((x: unknown) => {
    const n = typeof x === 'string' && /^\d{1,16}$/.test(x) ? Number(x) : x;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n >= below) refuse(`${field} lists ${JSON.stringify(x)}, not an LSN below this entry's (${below})`);
    return n;
  });
  return [...new Set(lsns)].sort((a, b) => a - b);
}

function safe(kind: string, name: string): void {
  try {
    assertSafeName(kind, name);
  } catch {
    refuse(`${kind} name ${JSON.stringify(name.slice(0, 300))} is not a safe name`);
  }
}

/**
 * Checks an entry received from a peer and returns it in its normal form, or throws
 * INVALID_ENTRY. Every field that later becomes a path (names under the part store and
 * `detached/`), SQL (names, the partition literal) or an allocation of memory (sizes, counts)
 * is checked here, once, before anything is stored. Pure: the LSN's upper bound needs the
 * allocator and is checked by the caller.
 */
export function validateEntry(input: unknown, ctx: EntryContext): LogEntry {
  if (typeof input !== 'object' || input === null) refuse('an entry is not an object');
  const raw = input as Record<string, unknown>;
  const lsn = count(raw, 'lsn', Number.MAX_SAFE_INTEGER);
  if (lsn < 1) refuse('lsn must be positive');
  const kind = text(raw, 'kind') as EntryKind;
  if (!ENTRY_KINDS.includes(kind)) refuse(`unknown entry kind ${JSON.stringify(kind.slice(0, 50))}`);
  const origin = text(raw, 'origin');
  if (!ctx.members.has(origin)) refuse(`origin ${JSON.stringify(origin.slice(0, 300))} is not a member of this shard`);
  const entry: LogEntry = {
    lsn,
    kind,
    database: text(raw, 'database'),
    table: text(raw, 'table'),
    partitionId: text(raw, 'partitionId'),
    blockId: text(raw, 'blockId'),
    partName: text(raw, 'partName'),
    checksumsSha256: text(raw, 'checksumsSha256'),
    rows: count(raw, 'rows', ENTRY_LIMITS.rows),
    bytes: count(raw, 'bytes', ENTRY_LIMITS.partBytes),
    files: [],
    origin,
    allocatedAtMs: count(raw, 'allocatedAtMs', Number.MAX_SAFE_INTEGER),
    barrier: count(raw, 'barrier', lsn - 1),
    partition: text(raw, 'partition'),
  };
  const member = text(raw, 'member');
  if (member) entry.member = member;
  const leaseSize = count(raw, 'leaseSize', MAX_LEASE_SIZE);
  if (leaseSize) entry.leaseSize = leaseSize;
  const closesLeases = lsnList(raw, 'closesLeases', MAX_CLOSED_LEASES, lsn);
  if (closesLeases.length) entry.closesLeases = closesLeases;
  const usedLsns = lsnList(raw, 'usedLsns', MAX_CLOSED_LEASES * MAX_LEASE_SIZE, lsn);
  if (usedLsns.length) entry.usedLsns = usedLsns;
  const statement = text(raw, 'statement');
  if (statement) entry.statement = statement;
  if (raw.leased !== undefined && typeof raw.leased !== 'boolean') refuse('leased is not a boolean');
  if (raw.leased === true) entry.leased = true;
  const files = raw.files ?? [];
  if (!Array.isArray(files)) refuse('files is not a list');
  if (files.length > ENTRY_LIMITS.filesPerPart) refuse(`${files.length} files in one part (at most ${ENTRY_LIMITS.filesPerPart})`);
  entry.files = files.map((f: unknown): FileInfo => {
    if (typeof f !== 'object' || f === null) refuse('a file is not an object');
    const file = f as Record<string, unknown>;
    const name = text(file, 'name');
    try {
      assertSafeFileName(name);
    } catch {
      refuse(`file name ${JSON.stringify(name.slice(0, 300))} is not a safe name`);
    }
    const sha256 = text(file, 'sha256');
    if (!SHA256.test(sha256)) refuse(`file ${name}: sha256 is not 64 lowercase hex digits`);
    return { name, size: count(file, 'size', ENTRY_LIMITS.fileBytes), sha256 };
  });

  const size = JSON.stringify(entry).length;
  if (size > ENTRY_LIMITS.entryBytes) refuse(`the entry takes ${size} bytes (at most ${ENTRY_LIMITS.entryBytes})`);

  const empty = (...fields: Array<keyof LogEntry>) => {
    for (const f of fields) {
      const v = entry[f];
      if (Array.isArray(v) ? v.length > 0 : v !== '' && v !== 0 && v !== undefined) refuse(`a ${kind} entry carries ${f}`);
    }
  };
  if (kind !== 'lease') empty('leaseSize', 'closesLeases', 'usedLsns');
  if (kind !== 'insert') empty('leased');
  if (kind !== 'mutation' && kind !== 'schema') empty('statement');
  if (kind === 'schema') {
    empty('partitionId', 'partName', 'checksumsSha256', 'files', 'rows', 'bytes', 'barrier', 'partition', 'member');
    checkSchemaStatement(entry);
    return entry;
  }
  if (kind === 'void') {
    empty('files', 'rows', 'bytes', 'partition', 'member', 'barrier');
    if (entry.database) safe('database', entry.database);
    if (entry.table) safe('table', entry.table);
    return entry;
  }
  if (kind === 'lease') {
    empty('database', 'table', 'partitionId', 'blockId', 'partName', 'checksumsSha256', 'files', 'rows', 'bytes', 'partition', 'barrier', 'member');
    if (!entry.leaseSize && !entry.closesLeases) refuse('a lease entry that neither reserves LSNs nor closes a lease');
    return entry;
  }
  if (kind === 'decommission') {
    empty('database', 'table', 'partitionId', 'blockId', 'partName', 'checksumsSha256', 'files', 'rows', 'bytes', 'partition', 'barrier');
    if (!entry.member || !ctx.members.has(entry.member)) refuse(`decommission names ${JSON.stringify((entry.member ?? '').slice(0, 300))}, not a member of this shard`);
    return entry;
  }
  safe('database', entry.database);
  safe('table', entry.table);
  empty('member');
  if (kind === 'drop_partition' || kind === 'truncate' || kind === 'mutation') {
    empty('partitionId', 'partName', 'checksumsSha256', 'files', 'rows', 'bytes', 'barrier');
    if (entry.blockId !== `${BARRIER_PREFIX}${entry.database}.${entry.table}`) refuse(`a ${kind} entry's block ID is not its table's barrier`);
    if (kind === 'mutation') {
      empty('partition');
      checkMutationStatement(entry);
      return entry;
    }
    if (kind === 'truncate') {
      empty('partition');
      return entry;
    }
    if (entry.partition.length > MAX_PARTITION_TEXT) refuse(`partition longer than ${MAX_PARTITION_TEXT} characters`);
    let canonical: string;
    try {
      canonical = canonicalPartition(entry.partition);
    } catch (err) {
      refuse(`partition ${JSON.stringify(entry.partition.slice(0, 200))} is not a literal: ${(err as Error).message}`);
    }
    if (canonical !== entry.partition) refuse(`partition ${JSON.stringify(entry.partition.slice(0, 200))} is not in canonical form (${JSON.stringify(canonical.slice(0, 200))})`);
    return entry;
  }
  // insert
  empty('partition');
  if (!PARTITION_ID.test(entry.partitionId)) refuse(`partition ID ${JSON.stringify(entry.partitionId.slice(0, 300))} is not a ClickHouse partition ID`);
  safe('part', entry.partName);
  if (!SHA256.test(entry.checksumsSha256)) refuse('checksumsSha256 is not 64 lowercase hex digits');
  if (entry.blockId.length === 0 || entry.blockId.length > ENTRY_LIMITS.blockIdLength || entry.blockId.startsWith(BARRIER_PREFIX)) {
    refuse(`block ID ${JSON.stringify(entry.blockId.slice(0, 100))} is empty, too long or a barrier`);
  }
  if (!entry.files.some((f) => f.name === 'checksums.txt' && f.sha256 === entry.checksumsSha256)) refuse("the part's files do not include its checksums.txt");
  if (new Set(entry.files.map((f) => f.name)).size !== entry.files.length) refuse('a file is listed twice');
  const total = entry.files.reduce((sum, f) => sum + f.size, 0);
  if (total !== entry.bytes) refuse(`bytes ${entry.bytes} is not the sum of the files' sizes (${total})`);
  return entry;
}

/**
 * A mutation's statement is run as it is on every replica: it must read as one mutation of the
 * entry's own table, already in the canonical form the origin writes (no comment, no setting,
 * no second statement, nothing non-deterministic).
 */
function checkMutationStatement(entry: LogEntry): void {
  const statement = entry.statement ?? '';
  if (!statement) refuse('a mutation entry without its statement');
  let op;
  try {
    op = parseMutation(statement);
  } catch (err) {
    refuse(`mutation statement: ${(err as Error).message}`);
  }
  if (!op) refuse(`mutation statement ${JSON.stringify(statement.slice(0, 200))} is not an UPDATE, DELETE or CLEAR COLUMN of one table`);
  if (op.refusal) refuse(`mutation statement: ${op.refusal.message}`);
  if (op.database !== entry.database || op.table !== entry.table) refuse(`the mutation statement names another table than the entry's ${entry.database}.${entry.table}`);
  if (mutationStatement(op, `${quoteIdent(entry.database)}.${quoteIdent(entry.table)}`) !== statement) refuse('the mutation statement is not in canonical form');
}

/**
 * A schema entry's statement is run as it is on every replica: it must read back as one schema
 * change of the entry's own database and table, in canonical form; a CREATE TABLE must create
 * a plain MergeTree-family table and nothing else (as a clone's CREATE is held to).
 */
function checkSchemaStatement(entry: LogEntry): void {
  const statement = entry.statement ?? '';
  if (!statement) refuse('a schema entry without its statement');
  safe('database', entry.database);
  if (entry.table) safe('table', entry.table);
  const op = parseSchema(statement);
  if (!op) refuse(`schema statement ${JSON.stringify(statement.slice(0, 200))} is not a CREATE, DROP, RENAME or ALTER TABLE, or a CREATE or DROP DATABASE`);
  if (op.refusal) refuse(`schema statement: ${op.refusal.message}`);
  if (op.database !== entry.database || op.table !== entry.table) refuse(`the schema statement names another table than the entry's ${entry.database}.${entry.table}`);
  if (schemaStatement(op, quoteQualified) !== statement) refuse('the schema statement is not in canonical form');
  if (op.to) {
    if (op.to.database === undefined) refuse('a rename names its new table without its database');
    safe('database', op.to.database);
    safe('table', op.to.table);
  }
  const expectedBlock = entry.table ? `${BARRIER_PREFIX}${entry.database}.${entry.table}` : '';
  if (entry.blockId !== expectedBlock) refuse("a schema entry's block ID is not its table's barrier");
  if (op.action === 'create_table') {
    if (op.asTable) refuse('a replicated CREATE TABLE carries its whole definition, not AS another table');
    try {
      checkCreateQuery({ database: entry.database, table: entry.table, createQuery: statement.replace(/^CREATE TABLE IF NOT EXISTS /, 'CREATE TABLE ') });
    } catch (err) {
      refuse((err as Error).message);
    }
  }
}

/**
 * Whether two entries for the same LSN say the same thing. The allocation time is the origin's
 * clock at recording and may differ between a first record and recovery's; everything that is
 * applied must agree.
 */
export function sameEntry(a: LogEntry, b: LogEntry): boolean {
  const applied = (e: LogEntry) =>
    JSON.stringify([
      e.lsn,
      e.kind,
      e.database,
      e.table,
      e.partitionId,
      e.blockId,
      e.checksumsSha256,
      e.origin,
      e.partition ?? '',
      e.member ?? '',
      e.leaseSize ?? 0,
      e.leased ?? false,
      e.closesLeases ?? [],
      e.usedLsns ?? [],
      e.statement ?? '',
      e.kind === 'insert' ? [...e.files].sort((x, y) => (x.name < y.name ? -1 : 1)).map((f) => [f.name, f.size, f.sha256]) : [],
    ]);
  return applied(a) === applied(b);
}
