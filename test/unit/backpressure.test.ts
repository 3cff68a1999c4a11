import { describe, expect, it } from 'vitest';
import type { ClickHouseHttp } from '../../src/clickhouse/http.js';
import { ChorusError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { Backpressure, type BackpressureOptions } from '../../src/insert/backpressure.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { codeOf } from '../support/errors.js';

/**
 * Backpressure's decisions with a stand-in ClickHouse that answers the two queries it makes
 * (the integration test runs it against real servers): which limit is in force, and when an
 * insert is let in.
 */
function backpressure(opts: Partial<BackpressureOptions>, parts: { throwAt?: string; crowded?: Array<{ table: string; parts: number }> } = {}, lagSeconds = 0) {
  const queries: string[] = [];
  const ch = {
    rows: async (sql: string) => {
      queries.push(sql);
      if (sql.includes('merge_tree_settings')) return parts.throwAt === undefined ? [] : [{ value: parts.throwAt }];
      const limit = Number(/HAVING parts > (\d+)/.exec(sql)![1]);
      return (parts.crowded ?? []).filter((c) => c.parts > limit).map((c) => ({ database: 'default', table: c.table, partitionId: '202611', parts: c.parts }));
    },
  } as unknown as ClickHouseHttp;
  const bp = new Backpressure(
    { maxConcurrentInserts: 0, maxConcurrentInsertsPerTable: 0, maxApplyLagSeconds: 0, checkIntervalMs: 1000, ...opts },
    { ch, databases: ['default'], applyLagSeconds: () => lagSeconds, metrics: new Metrics(), logger: silentLogger() },
  );
  return { bp, queries };
}

describe('backpressure', () => {
  it("takes ClickHouse's own parts_to_throw_insert when no limit is configured, and 300 when the server does not say", async () => {
    const { bp, queries } = backpressure({}, { throwAt: '3000', crowded: [{ table: 't', parts: 2999 }, { table: 'u', parts: 3001 }] });
    await bp.check();
    expect(queries.filter((q) => q.includes('merge_tree_settings'))).toHaveLength(1);
    expect(codeOf(() => bp.admit('default.t')())).toBeUndefined();
    expect(codeOf(() => bp.admit('default.u'))).toBe('TOO_MANY_PARTS');
    expect(bp.conditions()).toEqual([expect.stringMatching(/default\.u: 3001 active parts .* > 3000/)]);
    await bp.check();
    expect(queries.filter((q) => q.includes('merge_tree_settings'))).toHaveLength(1);

    const silent = backpressure({}, { crowded: [{ table: 't', parts: 301 }] }).bp;
    await silent.check();
    expect(codeOf(() => silent.admit('default.t'))).toBe('TOO_MANY_PARTS');
  });

  it('counts no parts with the limit at 0, and clears a crowded table once merges catch up', async () => {
    const off = backpressure({ maxActivePartsPerPartition: 0 }, { crowded: [{ table: 't', parts: 10_000 }] });
    await off.bp.check();
    expect(off.queries).toHaveLength(0);
    expect(codeOf(() => off.bp.admit('default.t')())).toBeUndefined();

    const crowded = [{ table: 't', parts: 7 }];
    const { bp } = backpressure({ maxActivePartsPerPartition: 6 }, { crowded });
    await bp.check();
    expect(codeOf(() => bp.admit('default.t'))).toBe('TOO_MANY_PARTS');
    crowded[0]!.parts = 3;
    await bp.check();
    expect(codeOf(() => bp.admit('default.t')())).toBeUndefined();
  });

  it('refuses on lag with Retry-After 5 s, and bounds running inserts in all and per table until released', async () => {
    const lagging = backpressure({ maxApplyLagSeconds: 1 }, {}, 5).bp;
    await lagging.check();
    let err: ChorusError | undefined;
    try {
      lagging.admit('default.t');
    } catch (e) {
      err = e as ChorusError;
    }
    expect(err?.code).toBe('REPLICA_LAGGING');
    expect(err?.retryAfterSeconds).toBe(5);

    const { bp } = backpressure({ maxConcurrentInserts: 3, maxConcurrentInsertsPerTable: 2 });
    const a = bp.admit('default.t');
    const b = bp.admit('default.t');
    expect(codeOf(() => bp.admit('default.t'))).toBe('TOO_MANY_INSERTS');
    const c = bp.admit('default.u');
    expect(codeOf(() => bp.admit('default.v'))).toBe('TOO_MANY_INSERTS');
    a();
    a(); // a second release changes nothing
    expect(codeOf(() => bp.admit('default.v'))).toBeUndefined();
    expect(codeOf(() => bp.admit('default.t'))).toBe('TOO_MANY_INSERTS');
    b();
    c();
  });
});
