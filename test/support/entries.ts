import { partlessEntry, type LogEntry } from '../../src/log/entry.js';

/** A 64-hex-digit stand-in for a sha256, of one repeated character. */
export const sha = (c: string) => c.repeat(64);

/** An insert entry of the shard's member r1, with `fileCount` files; `over` replaces any field. */
export function insertEntry(lsn: number, fileCount = 1, over: Partial<LogEntry> = {}): LogEntry {
  const files = [{ name: 'checksums.txt', size: 1, sha256: sha('c') }, ...Array.from({ length: fileCount - 1 }, (_, i) => ({ name: `column_with_a_long_name_${i}.bin`, size: 1, sha256: sha('d') }))];
  return {
    lsn,
    kind: 'insert',
    database: 'default',
    table: 't',
    partitionId: 'all',
    blockId: `all_${lsn}`,
    partName: 'all_1_1_0',
    checksumsSha256: sha('c'),
    rows: 1,
    bytes: files.length,
    files,
    origin: 'r1',
    allocatedAtMs: 1,
    barrier: 0,
    partition: '',
    ...over,
  };
}

/** A mutation or schema entry of r1 on default.t at LSN 5 running `statement`; `over` replaces any field. */
export function statementEntry(kind: 'mutation' | 'schema', statement: string, over: Partial<LogEntry> = {}): LogEntry {
  return { ...partlessEntry(kind, 'r1', { database: 'default', table: 't', blockId: '!barrier:default.t', statement }), lsn: 5, allocatedAtMs: 1, barrier: 0, ...over };
}
