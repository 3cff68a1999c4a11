import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { columnsProblem, incompletePart, lz4Block, parseChecksums, parseColumns } from '../../src/parts/completeness.js';

/*
 * Parts written by the two ClickHouse releases the tests run (Debian's 18.16 and chdb's 26.7),
 * kept as fixtures: one table (Date, UInt64, Nullable(String), and on 26.7 a Map), 1,000 rows.
 * 18.16 writes wide parts (a .bin and .mrk per column), 26.7 a compact one (data.bin).
 */
const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'parts');
const RELEASES = ['clickhouse-18.16', 'clickhouse-26.7'] as const;

describe.each(RELEASES)('a part written by %s', (release) => {
  let dir: string;
  beforeEach(() => {
    dir = join(mkdtempSync(join(tmpdir(), 'chorus-part-')), 'part');
    cpSync(join(FIXTURES, release), dir, { recursive: true });
  });
  afterEach(() => rmSync(join(dir, '..'), { recursive: true, force: true }));

  it('is complete, and its checksums.txt lists files at their sizes on disk', () => {
    expect(incompletePart(dir)).toBeUndefined();
    const listed = parseChecksums(readFileSync(join(dir, 'checksums.txt')));
    expect(listed.length).toBeGreaterThan(3);
    for (const file of listed) expect(statSync(join(dir, file.name)).size, file.name).toBe(file.size);
    expect(listed.map((f) => f.name)).toContain('count.txt');
    expect(parseColumns(readFileSync(join(dir, 'columns.txt'), 'utf8'))).toContain('`s` Nullable(String)');
  });

  it('is incomplete when checksums.txt is empty or cut at any length (a short write on a full disk)', () => {
    const path = join(dir, 'checksums.txt');
    const full = readFileSync(path);
    for (let length = 0; length < full.length; length++) {
      writeFileSync(path, full.subarray(0, length));
      expect(incompletePart(dir), `cut to ${length} of ${full.length} bytes`).toMatch(/^checksums\.txt is incomplete/);
    }
  });

  it('is incomplete when columns.txt is empty or cut at any length', () => {
    const path = join(dir, 'columns.txt');
    const full = readFileSync(path);
    for (let length = 0; length < full.length; length++) {
      writeFileSync(path, full.subarray(0, length));
      expect(incompletePart(dir), `cut to ${length} of ${full.length} bytes`).toMatch(/^columns\.txt is incomplete/);
      expect(columnsProblem(dir)).toBeDefined();
    }
  });

  it('is incomplete when a listed file is shorter than listed, or missing', () => {
    const data = readdirSync(dir).find((f) => f.endsWith('.bin'))!;
    truncateSync(join(dir, data), statSync(join(dir, data)).size - 1);
    expect(incompletePart(dir)).toMatch(new RegExp(`^${data.replace('.', '\\.')} has \\d+ bytes where checksums\\.txt lists \\d+$`));
    unlinkSync(join(dir, data));
    expect(incompletePart(dir)).toBe(`${data}, listed in checksums.txt, is missing`);
  });

  it('cannot be read when columns.txt is missing', () => {
    unlinkSync(join(dir, 'columns.txt'));
    expect(incompletePart(dir)).toBe('columns.txt cannot be read (ENOENT)');
  });
});

describe('the formats', () => {
  it('refuses a checksums.txt format other than 4', () => {
    expect(() => parseChecksums(Buffer.from('checksums format version: 2\n1 files:\n'))).toThrow(/format version "2"/);
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
