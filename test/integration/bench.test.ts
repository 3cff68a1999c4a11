import { describe, expect, it } from 'vitest';
import { runBench, type SystemResult } from '../bench/bench.js';
import { figureRows, renderReport } from '../bench/report.js';

/** Quick mode only has to complete and produce every figure; timings are never asserted. */
describe('npm run bench --quick', () => {
  it('runs both systems and produces every figure of the report', { timeout: 600_000 }, async () => {
    const result = await runBench({ quick: true });
    const check = (s: SystemResult) => {
      for (const c of ['c1', 'c8', 'c32'] as const) {
        expect(s.w1[c].inserts).toBeGreaterThan(0);
        for (const v of [s.w1[c].insertsPerSec, s.w1[c].rowsPerSec, s.w1[c].zkRequestsPerInsert, s.w1[c].convergeMs]) expect(Number.isFinite(v)).toBe(true);
      }
      for (const v of [s.lagMs.p50, s.lagMs.p99, s.lagMs.max, s.w2.rowsPerSec, s.w2.plainRowsPerSec, s.w3.insertsPerSec, s.w3.znodesOwned, s.w4.zkRequestsPerSec, s.rssMb.clickhouseMax]) {
        expect(Number.isFinite(v)).toBe(true);
      }
      expect(s.lagMs.samples).toBeGreaterThan(0);
      expect(s.zkBytes.bytesPerInsert).toBeGreaterThan(0);
      for (const c of ['c1', 'c8', 'c32'] as const) {
        expect(s.w1Spread[c].runs.length).toBeGreaterThan(0);
        expect(s.w1[c].cpuMsPerInsert!.total).toBeGreaterThan(0);
      }
    };
    check(result.systems.rmt);
    check(result.systems.chorus);
    expect(result.systems.chorus.rssMb.sidecarMax).toBeGreaterThan(0);
    expect(result.systems.chorus.transfer?.mbPerSec).toBeGreaterThan(0);
    expect(result.systems.chorus.transfer?.cpMbPerSec).toBeGreaterThan(0);
    // The ZooKeeper footprint is not a timing: RMT's znodes grow with tables, Chorus's do not.
    expect(result.systems.rmt.w3.znodesOwned).toBeGreaterThan(result.systems.chorus.w3.znodesOwned * 100);
    // /chorus, the cluster, the head, and the dedup window's chunks: 1000 / 100 + 1 at most.
    expect(result.systems.chorus.w3.znodesOwned).toBeLessThanOrEqual(3 + 11);
    const report = renderReport(result);
    for (const row of figureRows(result)) {
      expect(report).toContain(`| ${row.figure} |`);
      expect(Number.isFinite(row.chorus)).toBe(true);
    }
  });
});
