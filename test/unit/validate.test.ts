import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalPartition } from '../../src/clickhouse/partition.js';
import type { LogEntry } from '../../src/log/entry.js';
import { ENTRY_LIMITS, sameEntry, validateEntry } from '../../src/log/validate.js';

const ctx = { members: new Set(['r1', 'r2', 'r3']) };
const hex = (c: string) => c.repeat(64);

function insert(over: Partial<LogEntry> = {}): LogEntry {
  return {
    lsn: 7,
    kind: 'insert',
    database: 'default',
    table: 'events',
    partitionId: '202611',
    blockId: `202611_${'ab'.repeat(16)}`,
    partName: '202611_1_1_0',
    checksumsSha256: hex('c'),
    rows: 10,
    bytes: 300,
    files: [
      { name: 'checksums.txt', size: 100, sha256: hex('c') },
      { name: 'data.bin', size: 150, sha256: hex('d') },
      { name: 'p.proj/data.bin', size: 50, sha256: hex('e') },
    ],
    origin: 'r1',
    allocatedAtMs: 1_700_000_000_000,
    barrier: 3,
    partition: '',
    ...over,
  };
}

const drop = (partition: string, over: Partial<LogEntry> = {}): LogEntry => ({
  ...insert(),
  kind: 'drop_partition',
  partitionId: '',
  blockId: '!barrier:default.events',
  partName: '',
  checksumsSha256: '',
  rows: 0,
  bytes: 0,
  files: [],
  barrier: 0,
  partition,
  ...over,
});

const code = (fn: () => unknown) => {
  try {
    fn();
    return 'accepted';
  } catch (err) {
    return (err as { code?: string }).code;
  }
};

describe('entry validator', () => {
  it('accepts the entries Chorus writes, in their normal form', () => {
    expect(validateEntry(insert(), ctx)).toEqual(insert());
    expect(validateEntry({ ...insert(), lsn: '7', rows: '10' }, ctx)).toEqual(insert());
    expect(validateEntry(drop("tuple(1, 'a')"), ctx).partition).toBe("tuple(1, 'a')");
    expect(code(() => validateEntry(drop('', { kind: 'truncate' }), ctx))).toBe('accepted');
    expect(code(() => validateEntry({ ...drop(''), kind: 'void', blockId: '', database: '', table: '' }, ctx))).toBe('accepted');
    const decommission = { ...drop(''), kind: 'decommission', database: '', table: '', blockId: '', member: 'r3' };
    expect(validateEntry(decommission, ctx).member).toBe('r3');
  });

  it('refuses what would become a path, SQL or an unbounded allocation', () => {
    const refused: Array<[string, unknown]> = [
      ['file ../..', insert({ files: [...insert().files, { name: '../..', size: 0, sha256: hex('f') }], bytes: 300 })],
      ['file in a subdirectory', insert({ files: [...insert().files, { name: 'a/b', size: 0, sha256: hex('f') }] })],
      ['table with /', insert({ table: 'a/b' })],
      ['database ..', insert({ database: '..' })],
      ['part name with /', insert({ partName: '../../etc' })],
      ['partition id with a quote', insert({ partitionId: "1'" })],
      ['drop with a second statement', drop('1; DROP TABLE x')],
      ['drop with settings', drop('tuple(1) SETTINGS max_threads = 1')],
      ['drop not canonical', drop('(1, 2)')],
      ['drop with an expression', drop('toYYYYMM(now())')],
      ['drop without a partition', drop('')],
      ['truncate with a partition', drop('1', { kind: 'truncate' })],
      ['unknown kind', insert({ kind: 'rm -rf' as never })],
      ['origin not a member', insert({ origin: 'mallory' })],
      ['decommission of a stranger', { ...drop(''), kind: 'decommission', database: '', table: '', blockId: '', member: 'x' }],
      ['lsn 0', insert({ lsn: 0 })],
      ['lsn negative', insert({ lsn: -4 })],
      ['lsn not safe', insert({ lsn: 2 ** 60 })],
      ['lsn fraction', insert({ lsn: 1.5 })],
      ['barrier not below', insert({ barrier: 7 })],
      ['bytes not the files', insert({ bytes: 301 })],
      ['huge file', insert({ files: [{ name: 'checksums.txt', size: ENTRY_LIMITS.fileBytes + 1, sha256: hex('c') }], bytes: ENTRY_LIMITS.fileBytes + 1 })],
      ['huge rows', insert({ rows: ENTRY_LIMITS.rows + 1 })],
      ['bad sha', insert({ checksumsSha256: 'zz' })],
      ['no checksums.txt', insert({ files: [{ name: 'data.bin', size: 300, sha256: hex('d') }] })],
      ['file listed twice', insert({ files: [...insert().files, { name: 'data.bin', size: 0, sha256: hex('d') }] })],
      ['barrier as block id', insert({ blockId: '!barrier:default.events' })],
      ['table op with files', drop('1', { files: insert().files })],
      ['not an object', 'entry'],
    ];
    for (const [why, entry] of refused) expect(code(() => validateEntry(entry, ctx)), why).toBe('INVALID_ENTRY');
  });

  it('refuses a part of more files than one message can carry', () => {
    const files = Array.from({ length: ENTRY_LIMITS.filesPerPart }, (_, i) => ({ name: `c${i}.bin`, size: 1, sha256: hex('a') }));
    files.push({ name: 'checksums.txt', size: 1, sha256: hex('c') });
    expect(code(() => validateEntry(insert({ files, bytes: files.length }), ctx))).toBe('INVALID_ENTRY');
    expect(code(() => validateEntry(insert({ files: files.slice(1), bytes: files.length - 1 }), ctx))).toBe('accepted');
  });

  it('tells a conflicting entry from an identical copy', () => {
    expect(sameEntry(insert(), insert({ allocatedAtMs: 1, partName: 'other' }))).toBe(true);
    expect(sameEntry(insert(), insert({ files: [...insert().files].reverse() }))).toBe(true);
    for (const over of [{ kind: 'void' }, { table: 'x' }, { blockId: 'b' }, { checksumsSha256: hex('e') }, { origin: 'r2' }, { files: insert().files.slice(1) }] as Array<Partial<LogEntry>>) {
      expect(sameEntry(insert(), insert(over)), JSON.stringify(over)).toBe(false);
    }
    expect(sameEntry(drop('1'), drop('2'))).toBe(false);
  });

  // Random valid entries: names from the safe alphabet, files with sizes summing to bytes.
  const name = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_%-]{0,30}$/);
  const sha = fc.stringMatching(/^[0-9a-f]{64}$/);
  const validInsert = fc
    .record({
      lsn: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      database: name,
      table: name,
      partitionId: fc.stringMatching(/^[A-Za-z0-9_-]{1,40}$/),
      partName: name,
      checksums: sha,
      others: fc.uniqueArray(fc.record({ name: name.filter((n) => n !== 'checksums.txt'), size: fc.integer({ min: 0, max: 2 ** 30 }), sha256: sha }), { maxLength: 8, selector: (f) => f.name }),
      rows: fc.integer({ min: 0, max: ENTRY_LIMITS.rows }),
      origin: fc.constantFrom('r1', 'r2', 'r3'),
      barrierFraction: fc.double({ min: 0, max: 1, noNaN: true }),
    })
    .map((r): LogEntry => {
      const files = [{ name: 'checksums.txt', size: 64, sha256: r.checksums }, ...r.others];
      return {
        lsn: r.lsn,
        kind: 'insert',
        database: r.database,
        table: r.table,
        partitionId: r.partitionId,
        blockId: `${r.partitionId}_x`,
        partName: r.partName,
        checksumsSha256: r.checksums,
        rows: r.rows,
        bytes: files.reduce((s, f) => s + f.size, 0),
        files,
        origin: r.origin,
        allocatedAtMs: 0,
        barrier: Math.floor(r.barrierFraction * (r.lsn - 1)),
        partition: '',
      };
    });

  it('accepts every valid insert unchanged', () => {
    fc.assert(
      fc.property(validInsert, (e) => {
        expect(validateEntry(e, ctx)).toEqual(e);
      }),
    );
  });

  const unsafe = fc.oneof(
    fc.constantFrom('..', '../..', '/etc/passwd', 'a/../b', '.hidden', '', 'a b', "a'b", 'a`b', 'x'.repeat(256), 'a\0b', 'a\nb'),
    fc.string({ maxLength: 20 }).filter((s) => !/^[A-Za-z0-9_][A-Za-z0-9_.%-]*$/.test(s) || s.includes('..')),
  );

  it('refuses any valid insert mutated into an unsafe name or a huge size', () => {
    const mutation = fc.oneof(
      unsafe.map((v) => (e: LogEntry) => ({ ...e, table: v })),
      unsafe.map((v) => (e: LogEntry) => ({ ...e, database: v })),
      unsafe.map((v) => (e: LogEntry) => ({ ...e, partName: v })),
      unsafe.filter((v) => !/^[A-Za-z0-9_][A-Za-z0-9_.%-]*\.proj$/.test(v.split('/')[0] ?? '') || v.split('/').length > 2).map(
        (v) => (e: LogEntry) => ({ ...e, files: [...e.files, { name: v, size: 0, sha256: e.checksumsSha256 }] }),
      ),
      fc.integer({ min: ENTRY_LIMITS.partBytes + 1, max: Number.MAX_SAFE_INTEGER }).map((v) => (e: LogEntry) => ({ ...e, bytes: v })),
      fc.integer({ min: ENTRY_LIMITS.rows + 1, max: Number.MAX_SAFE_INTEGER }).map((v) => (e: LogEntry) => ({ ...e, rows: v })),
      fc.integer({ min: ENTRY_LIMITS.fileBytes + 1, max: Number.MAX_SAFE_INTEGER }).map(
        (v) => (e: LogEntry) => ({ ...e, files: e.files.map((f, i) => (i === 0 ? { ...f, size: v } : f)), bytes: e.bytes - e.files[0]!.size + v }),
      ),
      fc.integer({ max: 0 }).map((v) => (e: LogEntry) => ({ ...e, lsn: v })),
    );
    fc.assert(
      fc.property(validInsert, mutation, (e, mutate) => {
        expect(code(() => validateEntry(mutate(e), ctx))).toBe('INVALID_ENTRY');
      }),
    );
  });

  it('accepts a drop exactly when its partition is a literal in canonical form', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (text) => {
        let canonical: string | undefined;
        try {
          canonical = canonicalPartition(text);
        } catch {
          canonical = undefined;
        }
        const outcome = code(() => validateEntry(drop(text), ctx));
        expect(outcome).toBe(canonical === text ? 'accepted' : 'INVALID_ENTRY');
        if (canonical !== undefined) expect(code(() => validateEntry(drop(canonical), ctx))).toBe('accepted');
      }),
    );
  });
});
