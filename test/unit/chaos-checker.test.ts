import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { check, formatReport, type Attempt, type History, type InsertRecord, type Observed, type Outcome } from '../chaos/checker.js';

const REPLICAS = ['r1', 'r2', 'r3'];

const attempt = (outcome: Outcome, startedAt: number, endedAt = startedAt + 1, replica = 'r1'): Attempt => ({ replica, outcome, startedAt, endedAt });

const insert = (id: number, attempts: Attempt[], partition = 'p1', table = 't'): InsertRecord => ({ id, table, partition, rows: [id * 10, id * 10 + 1], attempts });

/** Every replica holding the same rows. */
const everywhere = (rows: number[], table = 't'): Observed => Object.fromEntries(REPLICAS.map((r) => [r, { [table]: [...rows] }]));

/**
 * A history as a correct system would leave it: acknowledged inserts stored, failed ones not,
 * unknown ones either way (decided by `applied`), on every replica alike.
 */
const historyArb = fc
  .array(
    fc.record({
      outcomes: fc.array(fc.constantFrom<Outcome>('ok', 'failed', 'unknown'), { minLength: 1, maxLength: 3 }),
      applied: fc.boolean(),
    }),
    { minLength: 1, maxLength: 30 },
  )
  .map((specs) => {
    const inserts = specs.map((s, i) => insert(i + 1, s.outcomes.map((o, k) => attempt(o, i * 10 + k, i * 10 + k + 1, REPLICAS[k % 3]))));
    const stored = inserts.filter((ins, i) => ins.attempts.some((a) => a.outcome === 'ok') || (ins.attempts.some((a) => a.outcome === 'unknown') && specs[i]!.applied));
    const history: History = { inserts, drops: [] };
    return { history, stored };
  });

describe('chaos checker', () => {
  it('passes every history a correct system could leave', () => {
    fc.assert(
      fc.property(historyArb, ({ history, stored }) => {
        const report = check(history, everywhere(stored.flatMap((i) => i.rows)));
        expect(report.violations).toEqual({ lost: 0, unexpected: 0, duplicated: 0, divergent: 0, survivedDrop: 0 });
        expect(report.ok).toBe(true);
      }),
    );
  });

  it('finds an acknowledged row missing from one replica: lost, and divergent', () => {
    fc.assert(
      fc.property(historyArb, fc.nat(), ({ history, stored }, pick) => {
        const acked = stored.filter((i) => i.attempts.some((a) => a.outcome === 'ok'));
        fc.pre(acked.length > 0);
        const victim = acked[pick % acked.length]!.rows[0]!;
        const observed = everywhere(stored.flatMap((i) => i.rows));
        observed.r2!.t = observed.r2!.t!.filter((row) => row !== victim);
        const report = check(history, observed);
        expect(report.ok).toBe(false);
        expect(report.tables[0]!.lost).toContainEqual(expect.objectContaining({ row: victim, missingOn: ['r2'] }));
        expect(report.tables[0]!.divergent).toContainEqual({ row: victim, presentOn: ['r1', 'r3'], missingOn: ['r2'] });
      }),
    );
  });

  it('takes rows stored twice as reported duplicates only when the report covers them: no more inserts than reported, twice everywhere, tried through two replicas', () => {
    const retried = insert(1, [attempt('unknown', 0, 5, 'r1'), attempt('ok', 6, 7, 'r2')]);
    const once = insert(2, [attempt('ok', 0, 1, 'r3')]);
    const history: History = { inserts: [retried, once], drops: [] };
    const stored = everywhere([...retried.rows, ...retried.rows, ...once.rows]);
    const accepted = check(history, stored, { t: 1 });
    expect(accepted.ok).toBe(true);
    expect(accepted.tables[0]!.reportedDuplicates).toEqual([1]);
    // Not reported, reported for more blocks than found, or stored twice on one replica only: violations.
    expect(check(history, stored).violations.duplicated).toBe(6);
    // Reported twice, found once: the other may have been dropped since.
    expect(check(history, stored, { t: 2 }).ok).toBe(true);
    const twoStoredTwice = everywhere([...retried.rows, ...retried.rows, ...once.rows, ...once.rows]);
    const bothRetried: History = { inserts: [retried, insert(2, [attempt('unknown', 0, 5, 'r3'), attempt('ok', 6, 7, 'r1')])], drops: [] };
    expect(check(bothRetried, twoStoredTwice, { t: 1 }).ok).toBe(false);
    expect(check(bothRetried, twoStoredTwice, { t: 2 }).ok).toBe(true);
    const onOne = everywhere([...retried.rows, ...once.rows]);
    onOne.r1!.t!.push(...retried.rows);
    expect(check(history, onOne, { t: 1 }).ok).toBe(false);
    // An insert tried through one replica only cannot be a cross-replica duplicate.
    const sameReplica: History = { inserts: [insert(1, [attempt('unknown', 0, 5, 'r1'), attempt('ok', 6, 7, 'r1')]), once], drops: [] };
    expect(check(sameReplica, stored, { t: 1 }).ok).toBe(false);
  });

  it('finds a row stored twice, a row nobody inserted and a row of a failed insert', () => {
    const history: History = { inserts: [insert(1, [attempt('ok', 0)]), insert(2, [attempt('failed', 5)])], drops: [] };
    const twice = check(history, { r1: { t: [10, 11, 10] }, r2: { t: [10, 11] }, r3: { t: [10, 11] } });
    expect(twice.tables[0]!.duplicated).toEqual([{ row: 10, replica: 'r1', copies: 2 }]);
    expect(twice.ok).toBe(false);
    const stranger = check(history, everywhere([10, 11, 777]));
    expect(stranger.tables[0]!.unexpected.map((u) => u.row)).toEqual([777, 777, 777]);
    const failedStored = check(history, everywhere([10, 11, 20, 21]));
    expect(failedStored.tables[0]!.unexpected).toContainEqual({ row: 20, replica: 'r1', insert: 2 });
    expect(failedStored.violations.unexpected).toBe(6);
  });

  it('lets an unknown insert be stored or not, but not on some replicas only', () => {
    const history: History = { inserts: [insert(1, [attempt('unknown', 0)])], drops: [] };
    expect(check(history, everywhere([10, 11])).ok).toBe(true);
    expect(check(history, everywhere([])).ok).toBe(true);
    const split = check(history, { r1: { t: [10, 11] }, r2: { t: [] }, r3: { t: [10, 11] } });
    expect(split.violations.divergent).toBe(2);
    // Part of a not-acknowledged insert is reported, not counted as a violation.
    expect(check(history, everywhere([10])).tables[0]!.partial).toEqual([1]);
  });

  it('orders drops against inserts by time: acknowledged before a drop began means removed; begun after it ended means kept', () => {
    const drop = { table: 't', partition: 'p1', attempts: [attempt('ok', 100, 110)] };
    const before = insert(1, [attempt('ok', 0, 10)]);
    const after = insert(2, [attempt('ok', 120, 130)]);
    const during = insert(3, [attempt('ok', 105, 115)]);
    const otherPartition = insert(4, [attempt('ok', 0, 10)], 'p2');
    const history: History = { inserts: [before, after, during, otherPartition], drops: [drop] };
    const correct = check(history, everywhere([20, 21, 40, 41]));
    expect(correct.ok).toBe(true);
    expect(check(history, everywhere([20, 21, 30, 31, 40, 41])).ok).toBe(true);
    // The drop came after `before` was acknowledged: its rows left behind are a violation.
    const survived = check(history, everywhere([10, 11, 20, 21, 40, 41]));
    expect(survived.violations.survivedDrop).toBe(2);
    // `after` began once the drop was acknowledged: it is owed.
    expect(check(history, everywhere([40, 41])).violations.lost).toBe(2);
    // A TRUNCATE covers every partition.
    const truncate: History = { inserts: [before, otherPartition], drops: [{ table: 't', partition: null, attempts: [attempt('ok', 100, 110)] }] };
    expect(check(truncate, everywhere([40, 41])).violations.survivedDrop).toBe(2);
    expect(check(truncate, everywhere([])).ok).toBe(true);
  });

  it('prints one line per table and the verdict', () => {
    const history: History = { inserts: [insert(1, [attempt('ok', 0)]), insert(2, [attempt('ok', 0)], 'p1', 'u')], drops: [] };
    const text = formatReport(check(history, { r1: { t: [10, 11], u: [20, 21] }, r2: { t: [10], u: [20, 21] }, r3: { t: [10, 11], u: [20, 21] } }));
    expect(text.split('\n')).toHaveLength(4);
    expect(text).toMatch(/^t\s+1\s+0\s+0\s+1\s+0\s+0\s+1/m);
    expect(text).toMatch(/^FAIL: .*"lost":1/m);
  });
});
