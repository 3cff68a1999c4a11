import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { findUnreplicatedWrite, mutationStatement, parseMutation } from '../../src/insert/parse.js';
import type { LogEntry } from '../../src/log/entry.js';
import { LocalLog } from '../../src/log/store.js';
import { validateEntry } from '../../src/log/validate.js';
import { insertEntry, statementEntry } from '../support/entries.js';

const Q = '`default`.`t`';

/** The statement a replica runs for `text`, or the refusal's code; 'other' when it is no mutation. */
const read = (text: string): string => {
  const op = parseMutation(text);
  if (!op) return 'other';
  return op.refusal ? op.refusal.code : mutationStatement(op, Q);
};

describe('parseMutation', () => {
  it('reads UPDATE, DELETE and CLEAR COLUMN commands and lightweight DELETE into one canonical statement', () => {
    expect(read('ALTER TABLE t DELETE WHERE n % 2 = 0')).toBe(`ALTER TABLE ${Q} DELETE WHERE n % 2 = 0`);
    expect(read("alter table db.`t` update a = 1, b = 'x\\'y' /* c */ where id in (1, 2) -- trailing")).toBe(`ALTER TABLE ${Q} update a = 1, b = 'x\\'y' where id in (1, 2)`);
    expect(read('ALTER TABLE t UPDATE a = a + 1 WHERE 1, DELETE WHERE b = 1e-3;')).toBe(`ALTER TABLE ${Q} UPDATE a = a + 1 WHERE 1, DELETE WHERE b = 1e-3`);
    expect(read('ALTER TABLE t CLEAR COLUMN c IN PARTITION 2024')).toBe(`ALTER TABLE ${Q} CLEAR COLUMN c IN PARTITION 2024`);
    expect(read('DELETE FROM t WHERE x->1 != 2')).toBe(`DELETE FROM ${Q} WHERE x->1 != 2`);
    const op = parseMutation('ALTER TABLE db.t UPDATE a = 1 WHERE 1, DELETE WHERE 1, CLEAR COLUMN c')!;
    expect([op.database, op.table, op.lightweight]).toEqual(['db', 't', false]);
    expect(op.grants.sort()).toEqual(['ALTER CLEAR COLUMN', 'ALTER DELETE', 'ALTER UPDATE']);
    expect(parseMutation('DELETE FROM t WHERE 1')!.grants).toEqual(['ALTER DELETE']);
  });

  it('leaves other statements, and mutations mixed with other commands, to the statement guard', () => {
    for (const text of ['ALTER TABLE t DROP PARTITION 1', 'ALTER TABLE t DELETE WHERE 1, DROP PARTITION 1', 'ALTER TABLE t ADD COLUMN x UInt8', 'ALTER TABLE t ON CLUSTER c DELETE WHERE 1', 'SELECT 1', 'UPDATE t SET a = 1 WHERE 1']) {
      expect(read(text), text).toBe('other');
      if (text !== 'SELECT 1') expect(findUnreplicatedWrite(text), text).toBeDefined();
    }
  });

  it('refuses, with a stable code, what would change different rows on each replica or cannot travel as written', () => {
    const refused: Array<[string, string]> = [
      ['ALTER TABLE t DELETE WHERE d < now()', 'NONDETERMINISTIC_MUTATION'],
      ['ALTER TABLE t UPDATE v = rand64() WHERE 1', 'NONDETERMINISTIC_MUTATION'],
      ['ALTER TABLE t UPDATE v = generateUUIDv4() WHERE 1', 'NONDETERMINISTIC_MUTATION'],
      ['ALTER TABLE t DELETE WHERE d IN (SELECT 1)', 'NONDETERMINISTIC_MUTATION'],
      ["ALTER TABLE t DELETE WHERE dictGet('d', 'a', id) = 1", 'NONDETERMINISTIC_MUTATION'],
      ['ALTER TABLE t DELETE WHERE 1 SETTINGS mutations_sync = 2', 'UNSUPPORTED_SETTING'],
      ['ALTER TABLE t DELETE WHERE 1; DROP TABLE x', 'BAD_QUERY'],
      ['ALTER TABLE t DELETE WHERE x = {p:UInt8}', 'BAD_QUERY'],
      ['ALTER TABLE t DELETE WHERE x = $$a$$', 'BAD_QUERY'],
      ['ALTER TABLE t DELETE /* /* */ WHERE 1 */ WHERE 2', 'BAD_QUERY'],
    ];
    for (const [text, code] of refused) expect(read(text), text).toBe(code);
    // A column or a string that only looks like a function call is no refusal.
    expect(read("ALTER TABLE t DELETE WHERE now = 'rand()'")).toBe(`ALTER TABLE ${Q} DELETE WHERE now = 'rand()'`);
  });

  it('reads its own canonical form back unchanged', () => {
    for (const text of ["ALTER TABLE x.y UPDATE a = concat(a, '!') /* c */ WHERE id <= 10", 'DELETE FROM t WHERE  a  =  1', 'ALTER TABLE t CLEAR COLUMN `weird``name`']) {
      const once = read(text);
      expect(read(once)).toBe(once);
    }
  });
});

describe('mutation entries', () => {
  const ctx = { members: new Set(['r1', 'r2']) };
  const mutation = (over: Partial<LogEntry> = {}): LogEntry => statementEntry('mutation', `ALTER TABLE ${Q} DELETE WHERE id = 1`, over);
  const code = (entry: unknown) => {
    try {
      validateEntry(entry, ctx);
      return 'accepted';
    } catch (err) {
      return (err as { code: string }).code;
    }
  };

  it('are accepted only with one canonical mutation of their own table', () => {
    expect(validateEntry(mutation(), ctx)).toEqual(mutation());
    expect(code(mutation({ statement: `DELETE FROM ${Q} WHERE id = 1` }))).toBe('accepted');
    for (const statement of [
      '',
      'ALTER TABLE `default`.`other` DELETE WHERE 1',
      'ALTER TABLE default.t DELETE WHERE 1',
      `ALTER TABLE ${Q} DELETE WHERE 1 /* c */`,
      `ALTER TABLE ${Q} DELETE WHERE 1; DROP TABLE x`,
      `ALTER TABLE ${Q} DELETE WHERE d < now()`,
      `ALTER TABLE ${Q} DROP PARTITION 1`,
      `ALTER TABLE ${Q} DELETE WHERE 1 SETTINGS max_threads = 1`,
    ]) {
      expect(code(mutation({ statement })), statement).toBe('INVALID_ENTRY');
    }
    expect(code(mutation({ blockId: 'x' }))).toBe('INVALID_ENTRY');
    expect(code(insertEntry(5, 1, { statement: `ALTER TABLE ${Q} DELETE WHERE 1` }))).toBe('INVALID_ENTRY');
  });

  describe('in the local log', () => {
    let dir: string;
    let log: LocalLog;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'chorus-mutation-'));
      log = new LocalLog(dir);
    });
    afterEach(() => {
      log.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('wait for every entry of their table below them, hold the inserts above them until submitted, and are applied only once done', () => {
      const m = mutation({ lsn: 3 });
      log.addEntries([insertEntry(1), insertEntry(2, 1, { table: 'other' }), m, insertEntry(4, 1, { barrier: 3 }), insertEntry(5)], 'stored', 'r2');
      expect(log.blockedBy(m)).toMatch(/LSN 1 of the same table/);
      expect(log.blockedBy(insertEntry(4, 1, { barrier: 3 }))).toMatch(/LSN 3/);
      // An insert whose barrier is older still orders after every known operation of its table.
      expect(log.blockedBy(insertEntry(5))).toMatch(/LSN 3/);
      log.markApplied(insertEntry(1), 1);
      expect(log.blockedBy(m)).toBeUndefined();
      expect(log.newestBarrier('default', 't')).toBe(3);
      expect(log.tablesWithPendingOps()).toEqual(new Set(['default.t']));
      log.markAttaching(3, 7);
      log.markAttachDone(3);
      // Submitted: what comes after it may be attached, but it is not applied until ClickHouse is done.
      expect(log.blockedBy(insertEntry(4, 1, { barrier: 3 }))).toBeUndefined();
      expect(log.blockedBy(insertEntry(5))).toBeUndefined();
      expect(log.tablesWithPendingOps()).toEqual(new Set());
      expect(log.runningMutations().map((e) => e.lsn)).toEqual([3]);
      expect(log.get(3)!.state).toBe('stored');
      log.setState(3, 'applied');
      expect(log.runningMutations()).toEqual([]);
    });
  });
});
