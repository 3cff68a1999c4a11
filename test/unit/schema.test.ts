import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { quoteQualified } from '../../src/clickhouse/http.js';
import { parseSchema, schemaStatement } from '../../src/insert/parse.js';
import type { LogEntry } from '../../src/log/entry.js';
import { LocalLog } from '../../src/log/store.js';
import { validateEntry } from '../../src/log/validate.js';
import { insertEntry, statementEntry } from '../support/entries.js';
/** What a replica runs for `text` ('other': not a schema change Chorus reads; a code: refused). */
const read = (text: string): string => {
  const op = parseSchema(text);
  if (!op) return 'other';
  return op.refusal ? op.refusal.code : `${op.action}: ${schemaStatement(op, quoteQualified)}`;
};

describe('parseSchema', () => {
  it('reads table and database changes into statements a replica may run again', () => {
    expect(read('create table if not exists db.t (d Date DEFAULT today(), id UInt64) ENGINE=MergeTree ORDER BY id -- c')).toBe(
      'create_table: CREATE TABLE IF NOT EXISTS `db`.`t` (d Date DEFAULT today(), id UInt64) ENGINE=MergeTree ORDER BY id',
    );
    expect(read('CREATE TABLE t AS db.src ENGINE = MergeTree ORDER BY id')).toBe('create_table: CREATE TABLE IF NOT EXISTS `t` AS `db`.`src` ENGINE = MergeTree ORDER BY id');
    expect(read('DROP TABLE IF EXISTS db.t SYNC')).toBe('drop_table: DROP TABLE IF EXISTS `db`.`t`');
    expect(read('RENAME TABLE a TO db.b')).toBe('rename_table: RENAME TABLE `a` TO `db`.`b`');
    expect(read('ALTER TABLE t ADD COLUMN x UInt8 DEFAULT 1 AFTER id, DROP COLUMN y, MODIFY SETTING a = 1, b = 2')).toBe(
      'alter_table: ALTER TABLE `t` ADD COLUMN x UInt8 DEFAULT 1 AFTER id, DROP COLUMN y, MODIFY SETTING a = 1, b = 2',
    );
    expect(read('CREATE DATABASE db ENGINE = Atomic')).toBe('create_database: CREATE DATABASE IF NOT EXISTS `db` ENGINE = Atomic');
    expect(read('DROP DATABASE IF EXISTS db')).toBe('drop_database: DROP DATABASE IF EXISTS `db`');
    expect(parseSchema('ALTER TABLE t ADD COLUMN a UInt8, RENAME COLUMN b TO c')!.grants).toEqual(['ALTER ADD COLUMN', 'ALTER RENAME COLUMN']);
  });

  it('leaves other statements to the statement guard, and refuses what cannot be replicated as written', () => {
    for (const text of ['CREATE TEMPORARY TABLE t (id UInt8)', 'CREATE VIEW v AS SELECT 1', 'ALTER TABLE t ADD COLUMN x UInt8, DELETE WHERE 1', 'ALTER TABLE t MODIFY ORDER BY id', 'SELECT 1', 'ALTER TABLE t ON CLUSTER c ADD COLUMN x UInt8']) {
      expect(read(text), text).toBe('other');
    }
    const refused: Array<[string, string]> = [
      ['CREATE TABLE t ENGINE = MergeTree ORDER BY id AS SELECT 1 AS id', 'NOT_REPLICATED_STATEMENT'],
      ['CREATE TABLE t ON CLUSTER c (id UInt8) ENGINE = MergeTree ORDER BY id', 'NOT_REPLICATED_STATEMENT'],
      ['CREATE TABLE t AS numbers(10)', 'NOT_REPLICATED_STATEMENT'],
      ['CREATE DATABASE db ENGINE = MySQL(\'h\', \'d\', \'u\', \'p\')', 'NOT_REPLICATED_STATEMENT'],
      ['DROP TABLE t1, t2', 'NOT_REPLICATED_STATEMENT'],
      ['RENAME TABLE a TO b, c TO d', 'NOT_REPLICATED_STATEMENT'],
      ['ALTER TABLE t ADD COLUMN x UInt8 SETTINGS alter_sync = 2', 'UNSUPPORTED_SETTING'],
      ['ALTER TABLE t ADD COLUMN x UInt8; DROP TABLE u', 'BAD_QUERY'],
      ['ALTER TABLE t ADD COLUMN x UInt8 DEFAULT {p:UInt8}', 'BAD_QUERY'],
    ];
    for (const [text, code] of refused) expect(read(text), text).toBe(code);
  });
});

describe('schema entries', () => {
  const ctx = { members: new Set(['r1']) };
  const schema = (statement: string, over: Partial<LogEntry> = {}): LogEntry => statementEntry('schema', statement, over);
  const code = (entry: unknown) => {
    try {
      validateEntry(entry, ctx);
      return 'accepted';
    } catch (err) {
      return (err as { code: string }).code;
    }
  };

  it('are accepted only as one canonical change of their own table, a CREATE only of a plain MergeTree table', () => {
    expect(code(schema('CREATE TABLE IF NOT EXISTS `default`.`t` (`id` UInt64) ENGINE = MergeTree ORDER BY id'))).toBe('accepted');
    expect(code(schema('ALTER TABLE `default`.`t` ADD COLUMN x UInt8'))).toBe('accepted');
    expect(code(schema('CREATE DATABASE IF NOT EXISTS `default`', { table: '', blockId: '' }))).toBe('accepted');
    for (const entry of [
      schema('CREATE TABLE IF NOT EXISTS `default`.`t` (`id` UInt64) ENGINE = Log'),
      schema('CREATE TABLE IF NOT EXISTS `default`.`t` (`id` UInt64) ENGINE = MergeTree ORDER BY id AS SELECT 1'),
      schema('CREATE TABLE IF NOT EXISTS `default`.`t` AS `default`.`u`'),
      schema('CREATE TABLE `default`.`t` (`id` UInt64) ENGINE = MergeTree ORDER BY id'),
      schema('ALTER TABLE `default`.`u` ADD COLUMN x UInt8'),
      schema('ALTER TABLE `default`.`t` ADD COLUMN x UInt8 /* c */'),
      schema('ALTER TABLE `default`.`t` ADD COLUMN x UInt8', { blockId: '' }),
      schema('RENAME TABLE `default`.`t` TO `b`'),
      schema('CREATE DATABASE IF NOT EXISTS `default`'),
      schema(''),
    ]) {
      expect(code(entry), entry.statement).toBe('INVALID_ENTRY');
    }
  });

  describe('in the local log', () => {
    let dir: string;
    let log: LocalLog;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'chorus-schema-'));
      log = new LocalLog(dir);
    });
    afterEach(() => {
      log.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("order a table's inserts, and a database's own change orders every table of it", () => {
      const alter = schema('ALTER TABLE `default`.`t` ADD COLUMN x UInt8', { lsn: 3 });
      const dropDb = schema('DROP DATABASE IF EXISTS `default`', { lsn: 6, table: '', blockId: '' });
      log.addEntries([insertEntry(1), insertEntry(2, 1, { table: 'u', blockId: 'u_2' }), alter, insertEntry(4, 1, { barrier: 3 }), insertEntry(5, 1, { table: 'u', blockId: 'u_5' }), dropDb, insertEntry(7, 1, { table: 'u', blockId: 'u_7' })], 'stored', 'r1');
      expect(log.blockedBy(alter)).toMatch(/LSN 1 /);
      expect(log.blockedBy(insertEntry(4, 1, { barrier: 3 }))).toMatch(/LSN 3/);
      // Another table of the database does not wait for the ALTER, but everything waits for the database's own change.
      expect(log.blockedBy(insertEntry(5, 1, { table: 'u', blockId: 'u_5' }))).toBeUndefined();
      expect(log.blockedBy(dropDb)).toMatch(/LSN 1 /);
      expect(log.blockedBy(insertEntry(7, 1, { table: 'u', blockId: 'u_7' }))).toMatch(/LSN 6/);
      // What a staged part's schema is sure to include, and the changes an insert's LSN passes.
      expect(log.schemaSettledThrough('default', 't')).toBe(2);
      expect(log.schemaChangesBetween('default', 't', 2, 8)).toEqual([3, 6]);
      expect(log.schemaChangesBetween('default', 'u', 0, 5)).toEqual([]);
      log.setState(3, 'applied');
      expect(log.schemaSettledThrough('default', 't')).toBe(5);
    });
  });
});
