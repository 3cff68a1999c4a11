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
    // The partition is carried in its canonical form.
    expect(parseTableOp("ALTER TABLE t DROP PARTITION ( 1 ,'a' )")).toMatchObject({ partition: "tuple(1, 'a')" });
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

import fc from 'fast-check';
import { findUnreplicatedWrite } from '../../src/insert/parse.js';
import { canonicalPartition } from '../../src/clickhouse/partition.js';

describe('the statement guard', () => {
  it('refuses a quote inside a comment that hid a second command from the old comma scan', () => {
    expect(() => parseTableOp("ALTER TABLE t DROP PARTITION 1 /* ' */, DELETE WHERE 1 /* ' */")).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    expect(() => parseTableOp("ALTER TABLE t DROP PARTITION 1 -- '\n, DELETE WHERE 1")).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    expect(() => parseTableOp('ALTER TABLE t DROP PARTITION toYYYYMM(now())')).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
  });

  const writes: Array<[string, string | undefined, string]> = [
    ['ALTER TABLE db.t UPDATE x = 1 WHERE 1', 'db', 't'],
    ['ALTER TABLE t DELETE WHERE 1', undefined, 't'],
    ['ALTER TABLE t ON CLUSTER c DROP PARTITION 1', undefined, 't'],
    ["ALTER TABLE t DROP PART 'all_1_1_0'", undefined, 't'],
    ['ALTER TABLE t DETACH PARTITION 1', undefined, 't'],
    ['ALTER TABLE t ATTACH PARTITION 1', undefined, 't'],
    ['ALTER TABLE t REPLACE PARTITION 1 FROM u', undefined, 't'],
    ["ALTER TABLE t MOVE PARTITION 1 TO DISK 'd'", undefined, 't'],
    ['ALTER TABLE t FREEZE PARTITION 1', undefined, 't'],
    ['ALTER TABLE t ADD COLUMN y UInt8', undefined, 't'],
    ['DELETE FROM db.t WHERE 1', 'db', 't'],
    ['UPDATE t SET x = 1 WHERE 1', undefined, 't'],
    ['TRUNCATE TABLE t SYNC', undefined, 't'],
    ['TRUNCATE TABLE t ON CLUSTER c', undefined, 't'],
    ['TRUNCATE t', undefined, 't'],
    ['OPTIMIZE TABLE db.t FINAL', 'db', 't'],
    ['DROP TABLE IF EXISTS db.t', 'db', 't'],
    ['DETACH TABLE t', undefined, 't'],
    ['RENAME TABLE u TO v, t TO w', undefined, 't'],
    ['EXCHANGE TABLES u AND db.t', 'db', 't'],
  ];

  it('names the table of every statement that changes a table on one replica', () => {
    for (const [sql, database, table] of writes) {
      const found = findUnreplicatedWrite(sql);
      expect(found, sql).toBeDefined();
      expect(found!.tables, sql).toContainEqual({ database, table });
    }
  });

  it('lets reads and statements on no table through', () => {
    for (const sql of ['SELECT 1', "SELECT 'ALTER TABLE t DELETE WHERE 1'", 'SHOW TABLES', 'EXISTS TABLE t', 'DESCRIBE TABLE t', '-- ALTER TABLE t DELETE WHERE 1\nSELECT 1', 'CREATE TABLE x (a UInt8) ENGINE = Memory']) {
      expect(findUnreplicatedWrite(sql), sql).toBeUndefined();
    }
  });

  // Noise ClickHouse's lexer drops between tokens: whitespace and comments, including comments
  // that hold quotes, semicolons and statements of their own.
  // Flat comments only: a nested one reads differently on 18.16 and on newer releases (the guard
  // reads both ways; parseInsert and parseTableOp need not).
  const flatFiller = fc.oneof(
    fc.constantFrom(' ', '\n', '\t', '  '),
    fc.string().map((s) => `/*${s.replace(/[/*]/g, '')}*/`),
    fc.string().map((s) => ` --${s.replace(/\n/g, '')}\n`),
    fc.constantFrom("/* ' */", '/* " */', '/* ` */', '/* ; */', '/* SELECT 1; */', "-- ';\n"),
  );
  const filler = fc.oneof(flatFiller, fc.constantFrom('/* /* */ */'));
  const randomCase = (word: string) => fc.array(fc.boolean(), { minLength: word.length, maxLength: word.length }).map((up) => [...word].map((c, i) => (up[i] ? c.toUpperCase() : c.toLowerCase())).join(''));
  const spell = (sql: string, fill = filler) => {
    const words = sql.split(' ');
    return fc
      .tuple(fc.tuple(...words.map((w) => (/^[A-Za-z]+$/.test(w) && w !== 't' && w !== 'db' ? randomCase(w) : fc.constant(w)))), fc.array(fill, { minLength: words.length, maxLength: words.length }))
      .map(([ws, fills]) => ws.map((w, i) => (i === 0 ? w : ` ${fills[i]} ${w}`)).join('') + fills[0]!.replace(/^--.*\n?$/, ''));
  };

  it('property: comments, case and whitespace never hide a write nor change its table', () => {
    for (const [sql, database, table] of writes) {
      fc.assert(
        fc.property(spell(sql), (text) => {
          const found = findUnreplicatedWrite(text);
          expect(found, text).toBeDefined();
          expect(found!.tables, text).toContainEqual({ database, table });
        }),
        { numRuns: 60 },
      );
    }
  });

  it('property: comments, case and whitespace never change what parseInsert and parseTableOp read', () => {
    fc.assert(
      fc.property(spell('INSERT INTO db.t FORMAT TSV', flatFiller), (text) => {
        const r = parseInsert(text, { final: true });
        expect(r.kind).toBe('insert');
        if (r.kind === 'insert') expect(r.target).toMatchObject({ database: 'db', table: 't' });
      }),
    );
    fc.assert(
      fc.property(spell('TRUNCATE TABLE db.t', flatFiller), (text) => {
        expect(parseTableOp(text)).toEqual({ kind: 'truncate', database: 'db', table: 't' });
      }),
    );
    fc.assert(
      fc.property(spell('ALTER TABLE db.t DROP PARTITION', flatFiller), fc.constantFrom("'2026-11-01'", '202611', "ID '202611'", "tuple(1, 'a')"), (prefix, literal) => {
        const op = parseTableOp(`${prefix} ${literal}`);
        expect(op).toEqual({ kind: 'drop_partition', database: 'db', table: 't', partition: literal });
      }),
    );
  });

  it('property: whatever a comment or string holds, a drop of a partition stays one literal or is refused', () => {
    fc.assert(
      fc.property(fc.string(), fc.string(), (a, b) => {
        for (const text of [`ALTER TABLE t DROP PARTITION '${a}' /*${b}*/`, `ALTER TABLE t DROP PARTITION ${a}`, `ALTER TABLE t DROP PARTITION '${a.replace(/['\\]/g, '')}' ${b}`]) {
          let op;
          try {
            op = parseTableOp(text);
          } catch (err) {
            expect(err).toMatchObject({ code: 'BAD_QUERY' });
            continue;
          }
          if (op?.kind === 'drop_partition') expect(canonicalPartition(op.partition)).toBe(op.partition);
          // A refused statement stays refused, or is the drop it was, never something else.
          expect(findUnreplicatedWrite(text) ?? op).toBeDefined();
        }
      }),
    );
  });
});

import { insertSettings } from '../../src/insert/parse.js';
import { checkStatementSettings, stagingParams } from '../../src/insert/settings.js';

describe('settings that reach staging', () => {
  const after = (sql: string, final = true) => {
    const r = parseInsert(sql, { final: true });
    if (r.kind !== 'insert') throw new Error('not an insert');
    return insertSettings(sql, r.target.span[1], final);
  };

  it('reads the settings an INSERT sets in its own text', () => {
    expect(after('INSERT INTO t SETTINGS async_insert = 1, wait_for_async_insert=0 FORMAT TSV\n1\n')).toEqual(['async_insert', 'wait_for_async_insert']);
    expect(after("INSERT INTO t (a, `b)`) SETTINGS /* c */ insert_deduplication_token = 'x,y' VALUES (1)")).toEqual(['insert_deduplication_token']);
    expect(after('INSERT INTO t FORMAT TSV\nasync_insert\n')).toEqual([]);
    expect(after('INSERT INTO t SELECT 1 SETTINGS insert_deduplicate = 1')).toContain('insert_deduplicate');
    expect(after('INSERT INTO t SETTINGS async_in', false)).toBe('incomplete');
    expect(after('INSERT INTO t SELECT 1', false)).toBe('incomplete');
    expect(() => checkStatementSettings(['ASYNC_INSERT'])).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_SETTING' }));
    expect(() => checkStatementSettings(['max_insert_block_size'])).not.toThrow();
  });

  it('property: a setting split anywhere across chunks is read the same as whole', () => {
    const sql = "INSERT INTO db.t (a) SETTINGS max_insert_block_size = 10, async_insert = 1 FORMAT TSV\n1\n";
    const r = parseInsert(sql, { final: true });
    if (r.kind !== 'insert') throw new Error('not an insert');
    fc.assert(
      fc.property(fc.integer({ min: r.target.span[1], max: sql.length }), (cut) => {
        const partial = insertSettings(sql.slice(0, cut), r.target.span[1], false);
        if (partial !== 'incomplete') expect(partial).toEqual(['max_insert_block_size', 'async_insert']);
      }),
    );
  });

  it('property: no URL parameter replaces the statement or a setting Chorus forces', () => {
    const forced = { insert_deduplicate: '0', async_insert: '0' };
    const key = fc.oneof(fc.constantFrom('query', 'async_insert', 'wait_for_async_insert', 'insert_deduplicate', 'user', 'password', 'database', 'insert_deduplication_token', 'max_insert_block_size'), fc.string());
    fc.assert(
      fc.property(fc.array(fc.tuple(key, fc.string())), (pairs) => {
        const params = new URLSearchParams(pairs);
        const out = stagingParams(params, forced);
        for (const k of ['query', 'user', 'password', 'database', 'wait_for_async_insert', 'insert_deduplication_token']) expect(out).not.toHaveProperty(k);
        expect(out).toMatchObject(forced);
        // What reaches the URL of the staging insert: the statement is the one Chorus built.
        const url = new URL('http://ch/');
        for (const [k, v] of Object.entries(out)) url.searchParams.set(k, v);
        url.searchParams.set('query', 'INSERT INTO `_chorus`.`s` FORMAT TSV');
        expect(url.searchParams.getAll('query')).toEqual(['INSERT INTO `_chorus`.`s` FORMAT TSV']);
      }),
    );
  });
});

describe('insertSelect and insertClause', () => {
  const after = (text: string) => {
    const r = parseInsert(text, { final: true });
    if (r.kind !== 'insert') throw new Error('not an insert');
    return r.target.span[1];
  };
  it('find the SELECT of an INSERT ... SELECT behind comments and a column list', async () => {
    const { insertClause, insertSelect } = await import('../../src/insert/parse.js');
    for (const text of ['INSERT INTO t SELECT 1', 'INSERT INTO t (a, `b)`) /* x */ -- y\n with 1 AS x SELECT x', 'insert into db.t\n#c\nselect * from url(\'x\')']) {
      expect(insertSelect(text, after(text)), text).toMatch(/^(select|with)/i);
    }
    for (const text of ['INSERT INTO t FORMAT TSV', 'INSERT INTO t VALUES (1)', 'INSERT INTO t SETTINGS a = 1 FORMAT TSV', "INSERT INTO t (s) VALUES ('SELECT')"]) {
      expect(insertSelect(text, after(text)), text).toBeUndefined();
    }
    expect(insertClause('INSERT INTO t', after('INSERT INTO t'))).toBeUndefined();
    expect(insertClause('INSERT INTO t (a) /* c */ ', after('INSERT INTO t (a) /* c */ '))).toBeUndefined();
    expect(insertClause('INSERT INTO t FORMAT TSV', after('INSERT INTO t FORMAT TSV'))?.word).toBe('FORMAT');
  });
});
