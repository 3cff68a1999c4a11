import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { columnsProblem, incompletePart, lz4Block, parseChecksums, parseColumns } from '../../src/parts/completeness.js';
import { manifestOf } from '../../src/parts/files.js';

/*
 * Parts written by the two ClickHouse releases the tests run (Debian's 18.16 and chdb's 26.7),
 * kept as fixtures: one table (Date, UInt64, Nullable(String), and on 26.7 a Map), 1,000 rows.
 * 18.16 writes wide parts (a .bin and .mrk per column), 26.7 a compact one (data.bin).
 */
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'parts');
const RELEASES = ['clickhouse-18.16', 'clickhouse-26.7'] as const;

/** A fresh copy of a fixture part for each test of the calling describe block; the getter gives its directory. */
function partCopyPerTest(release: (typeof RELEASES)[number]): () => string {
  let dir = '';
  beforeEach(() => {
    dir = join(mkdtempSync(join(tmpdir(), 'chorus-part-')), 'part');
    cpSync(join(FIXTURES, release), dir, { recursive: true });
  });
  afterEach(() => rmSync(join(dir, '..'), { recursive: true, force: true }));
  return () => dir;
}

describe.each(RELEASES)('a part written by %s', (release) => {
  const part = partCopyPerTest(release);
  let dir: string;
  beforeEach(() => {
    dir = part();
  });

  it('is complete, and its checksums.txt lists files at their sizes on disk', async () => {
    expect(incompletePart(dir)).toBeUndefined();
    expect(incompletePart(dir, await manifestOf(dir))).toBeUndefined();
    const listed = parseChecksums(readFileSync(join(dir, 'checksums.txt')));
    expect(listed.length).toBeGreaterThan(3);
    for (const file of listed) expect(statSync(join(dir, file.name)).size, file.name).toBe(file.size);
    expect(listed.map((f) => f.name)).toContain('count.txt');
    expect(parseColumns(readFileSync(join(dir, 'columns.txt'), 'utf8'))).toContain('`s` Nullable(String)');
  });

  it.each([
    ['checksums.txt', /^checksums\.txt is incomplete/],
    ['columns.txt', /^columns\.txt is incomplete/],
  ])('is incomplete when %s is empty or cut at any length (a short write on a full disk)', (file, reason) => {
    const path = join(dir, file);
    const full = readFileSync(path);
    for (let length = 0; length < full.length; length++) {
      writeFileSync(path, full.subarray(0, length));
      expect(incompletePart(dir), `cut to ${length} of ${full.length} bytes`).toMatch(reason);
      if (file === 'columns.txt') expect(columnsProblem(dir)).toBeDefined();
    }
  });

  it('is incomplete when a listed file is shorter than listed, or missing, by its size on disk or in a manifest just taken', async () => {
    const data = readdirSync(dir).find((f) => f.endsWith('.bin'))!;
    truncateSync(join(dir, data), statSync(join(dir, data)).size - 1);
    const shorter = new RegExp(`^${data.replace('.', '\\.')} has \\d+ bytes where checksums\\.txt lists \\d+$`);
    expect(incompletePart(dir)).toMatch(shorter);
    expect(incompletePart(dir, await manifestOf(dir))).toMatch(shorter);
    unlinkSync(join(dir, data));
    expect(incompletePart(dir)).toBe(`${data}, listed in checksums.txt, is missing`);
    expect(incompletePart(dir, await manifestOf(dir))).toBe(`${data}, listed in checksums.txt, is missing`);
  });

  it('cannot be read when columns.txt is missing', () => {
    unlinkSync(join(dir, 'columns.txt'));
    expect(incompletePart(dir)).toBe('columns.txt cannot be read (ENOENT)');
  });
});

/** A checksums.txt in one uncompressed block (method 0x02; ClickHouse's block hash is not checked). */
function checksumsOf(files: Array<{ name: string; size: number }>): Buffer {
  const varUInt = (n: number) => {
    const out: number[] = [];
    do {
      out.push((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
      n = Math.floor(n / 128);
    } while (n > 0);
    return Buffer.from(out);
  };
  const body = Buffer.concat([
    varUInt(files.length),
    ...files.flatMap((f) => [varUInt(Buffer.byteLength(f.name)), Buffer.from(f.name), varUInt(f.size), Buffer.alloc(16), Buffer.from([0])]),
  ]);
  const header = Buffer.alloc(9);
  header[0] = 0x02;
  header.writeUInt32LE(9 + body.length, 1);
  header.writeUInt32LE(body.length, 5);
  return Buffer.concat([Buffer.from('checksums format version: 4\n'), Buffer.alloc(16), header, body]);
}

describe('parts with a full-text index or a projection', () => {
  const part = partCopyPerTest('clickhouse-26.7');
  let dir: string;
  beforeEach(() => {
    dir = part();
  });

  const listed = () => parseChecksums(readFileSync(join(dir, 'checksums.txt')));

  it("skips a full-text index's files, which ClickHouse lists with size 0 and does not check either", () => {
    writeFileSync(join(dir, 'skp_idx_t.gin_dict'), 'dictionary');
    writeFileSync(join(dir, 'checksums.txt'), checksumsOf([...listed(), { name: 'skp_idx_t.gin_dict', size: 0 }, { name: 'skp_idx_t.gin_post', size: 0 }]));
    expect(incompletePart(dir)).toBeUndefined();
  });

  it("checks a projection's files against the projection's own checksums.txt", async () => {
    const own = listed();
    cpSync(join(FIXTURES, 'clickhouse-26.7'), join(dir, 'p.proj'), { recursive: true });
    writeFileSync(join(dir, 'checksums.txt'), checksumsOf([...own, { name: 'p.proj', size: 12345 }]));
    expect(incompletePart(dir)).toBeUndefined();
    expect(incompletePart(dir, await manifestOf(dir))).toBeUndefined();
    truncateSync(join(dir, 'p.proj', 'data.bin'), 1);
    expect(incompletePart(dir)).toMatch(/^p\.proj\/data\.bin has 1 bytes where checksums\.txt lists \d+$/);
  });
});

describe('the formats', () => {
  it('refuses a checksums.txt format other than 4', () => {
    expect(() => parseChecksums(Buffer.from('checksums format version: 2\n1 files:\n'))).toThrow(/format version "2"/);
  });

  it('refuses a compressed block announcing more than LZ4 can expand to, before allocating it', () => {
    const bytes = checksumsOf([{ name: 'a.bin', size: 1 }]);
    const sizeAt = 'checksums format version: 4\n'.length + 16 + 5;
    bytes.writeUInt32LE(0xffffffff, sizeAt);
    bytes[sizeAt - 5] = 0x82;
    expect(() => parseChecksums(bytes)).toThrow(/announces 4294967295 bytes/);
  });

  it('decodes LZ4 matches that overlap their own output, and refuses one pointing before the start', () => {
    // "ab" as literals, then a match of 6 at offset 2: "abababab".
    expect(lz4Block(Buffer.from([0x22, 0x61, 0x62, 0x02, 0x00]), 8).toString()).toBe('abababab');
    expect(() => lz4Block(Buffer.from([0x22, 0x61, 0x62, 0x03, 0x00]), 8)).toThrow(/outside its block/);
    expect(() => lz4Block(Buffer.from([0x20, 0x61]), 2)).toThrow(/overruns/);
  });

  it('reads column types with spaces and parentheses', () => {
    expect(parseColumns('columns format version: 1\n2 columns:\n`m` Map(String, UInt64)\n`t` DateTime(\'UTC\')\n')).toEqual(['`m` Map(String, UInt64)', "`t` DateTime('UTC')"]);
  });
});
