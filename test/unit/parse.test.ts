import { describe, expect, it } from 'vitest';
import { parseInsert } from '../../src/insert/parse.js';

const target = (text: string, final = true) => {
  const r = parseInsert(text, { final });
  if (r.kind !== 'insert') throw new Error(`not an insert: ${r.kind}`);
  return r.target;
};

describe('parseInsert', () => {
  it('finds db.table and its span', () => {
    const text = 'INSERT INTO db.t FORMAT TSV';
    const t = target(text);
    expect(t).toMatchObject({ database: 'db', table: 't' });
    expect(text.slice(...t.span)).toBe('db.t');
  });

  it('accepts TABLE, quoting, comments and case', () => {
    expect(target('  /* c */ insert into table `my db`.`t``x` (a) VALUES (1)')).toMatchObject({ database: 'my db', table: 't`x' });
    expect(target('-- hi\nINSERT INTO "t" VALUES')).toMatchObject({ database: undefined, table: 't' });
    expect(target('INSERT INTO t')).toMatchObject({ table: 't' });
  });

  it('treats other statements as other', () => {
    expect(parseInsert('SELECT 1', { final: true }).kind).toBe('other');
    expect(parseInsert('ALTER TABLE t DROP PARTITION 1', { final: true }).kind).toBe('other');
    expect(parseInsert('', { final: true }).kind).toBe('other');
  });

  it('asks for more input when a chunk ends inside the table reference', () => {
    expect(parseInsert('INSERT INTO db.', { final: false }).kind).toBe('incomplete');
    expect(parseInsert('INSERT INTO my_tab', { final: false }).kind).toBe('incomplete');
    expect(parseInsert('INS', { final: false }).kind).toBe('incomplete');
    expect(parseInsert('INSERT INTO `a', { final: false }).kind).toBe('incomplete');
    expect(target('INSERT INTO my_tab ', false)).toMatchObject({ table: 'my_tab' });
  });

  it('refuses what cannot be replicated, with a stable code', () => {
    expect(() => parseInsert('INSERT INTO FUNCTION remote(x) VALUES', { final: true })).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    expect(() => parseInsert('INSERT t VALUES', { final: true })).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    expect(() => parseInsert('INSERT INTO', { final: true })).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
  });
});

import { blockIdOf } from '../../src/insert/staging.js';

describe('blockIdOf', () => {
  const t = { database: 'db', name: 't' };
  it('is the same for the same table, partition and content', () => {
    expect(blockIdOf(t, '202611', 'abc')).toBe(blockIdOf({ ...t }, '202611', 'abc'));
    expect(blockIdOf(t, '202611', 'abc')).toMatch(/^202611_[0-9a-f]{32}$/);
  });
  it('differs between tables, partitions, contents and tokens', () => {
    const ids = new Set([
      blockIdOf(t, '202611', 'abc'),
      blockIdOf({ database: 'db', name: 'u' }, '202611', 'abc'),
      blockIdOf(t, '202610', 'abc'),
      blockIdOf(t, '202611', 'abd'),
      blockIdOf(t, '202611', 'abc', { value: 'x', index: 0 }),
      blockIdOf(t, '202611', 'abc', { value: 'x', index: 1 }),
    ]);
    expect(ids.size).toBe(6);
  });
  it('ignores the content when a token is given', () => {
    expect(blockIdOf(t, '202611', 'abc', { value: 'x', index: 0 })).toBe(blockIdOf(t, '202611', 'zzz', { value: 'x', index: 0 }));
  });
});

import { parseTableOp } from '../../src/insert/parse.js';

describe('parseTableOp', () => {
  it('reads DROP PARTITION and TRUNCATE', () => {
    expect(parseTableOp("ALTER TABLE db.t DROP PARTITION '2026-11-01';")).toEqual({ kind: 'drop_partition', database: 'db', table: 't', partition: "'2026-11-01'" });
    expect(parseTableOp('alter table t drop partition 202611')).toEqual({ kind: 'drop_partition', database: undefined, table: 't', partition: '202611' });
    expect(parseTableOp("ALTER TABLE t DROP PARTITION ID '202611'")).toMatchObject({ partition: "ID '202611'" });
    expect(parseTableOp('TRUNCATE TABLE `db`.t')).toEqual({ kind: 'truncate', database: 'db', table: 't' });
    expect(parseTableOp('TRUNCATE TABLE IF EXISTS t')).toEqual({ kind: 'truncate', database: undefined, table: 't' });
  });

  it('leaves other statements alone', () => {
    expect(parseTableOp('ALTER TABLE t ADD COLUMN x UInt8')).toBeUndefined();
    expect(parseTableOp('SELECT 1')).toBeUndefined();
    expect(parseTableOp('ALTER TABLE t DETACH PARTITION 1')).toBeUndefined();
  });

  it('refuses a drop mixed with other commands', () => {
    expect(() => parseTableOp('ALTER TABLE t DROP PARTITION 1, DROP COLUMN x')).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    expect(parseTableOp("ALTER TABLE t DROP PARTITION tuple(1, 'a')")).toMatchObject({ partition: "tuple(1, 'a')" });
  });
});
