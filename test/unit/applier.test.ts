import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Attacher } from '../../src/clickhouse/attach.js';
import { sleep } from '../../src/core/async.js';
import { ChorusError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { LocalLog } from '../../src/log/store.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { PartStore } from '../../src/parts/store.js';
import { Applier } from '../../src/replication/applier.js';
import { insertEntry } from '../support/entries.js';

/**
 * The applier's retry policy on a real local log (SQLite in a temp dir). The attacher stands in
 * for ClickHouse: what is asserted is when the applier tries again, not how a part is attached.
 */
describe('applier: entries that waited for ClickHouse', () => {
  let dir: string;
  let log: LocalLog;
  let applier: Applier;
  let clickhouseUp = false;
  const attaches: number[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-applier-'));
    log = new LocalLog(dir);
    clickhouseUp = false;
    attaches.length = 0;
    const attacher = {
      attach: async (entry: { lsn: number }) => {
        attaches.push(entry.lsn);
        // As Attacher reports it: ATTACH_FAILED, caused by the ClickHouse client's error.
        if (!clickhouseUp) throw new ChorusError('ATTACH_FAILED', 'ATTACH PART failed', new ChorusError('CLICKHOUSE_UNAVAILABLE', 'ClickHouse unreachable: ECONNREFUSED'));
        return 1000 + entry.lsn;
      },
    } as unknown as Attacher;
    const store = { has: async () => true } as unknown as PartStore;
    applier = new Applier(
      { self: 'r2', fetchConcurrency: 4, retryDelayMs: 100, fetchTimeoutMs: 1000, maxPushedBytesStoring: 0, clickhouseAnswers: async () => clickhouseUp },
      log,
      store,
      attacher,
      [],
      new Metrics(),
      silentLogger(),
    );
  });

  afterEach(async () => {
    await applier.stop();
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('retries them as soon as ClickHouse answers again, not after their grown backoff', async () => {
    log.addEntries([insertEntry(1), insertEntry(2)], 'pending', 'r1');
    applier.start();
    // ClickHouse away for 2.5 s: each entry's backoff grows 100, 200, 400, 800, 1600 ms.
    await sleep(2500);
    const triesWhileAway = attaches.length;
    expect(triesWhileAway).toBeGreaterThanOrEqual(8);
    clickhouseUp = true;
    // The next try after the backoff would come up to 1.6 s later; the probe runs every 100 ms.
    await sleep(600);
    expect(log.unappliedLsns()).toEqual([]);
    expect(log.get(1)!.state).toBe('applied');
    expect(log.get(2)!.state).toBe('applied');
  });

  it('an entry failing for another reason keeps its backoff when ClickHouse answers', async () => {
    const failing = { attach: async () => { attaches.push(7); throw new ChorusError('ATTACH_FAILED', 'part not found by content'); } } as unknown as Attacher;
    applier = new Applier(
      { self: 'r2', fetchConcurrency: 4, retryDelayMs: 200, fetchTimeoutMs: 1000, maxPushedBytesStoring: 0, clickhouseAnswers: async () => true },
      log,
      { has: async () => true } as unknown as PartStore,
      failing,
      [],
      new Metrics(),
      silentLogger(),
    );
    log.addEntries([insertEntry(7)], 'pending', 'r1');
    applier.start();
    // Tries at 0, 200, 600 and 1400 ms: four within 1.2 s would mean the backoff was skipped.
    await sleep(1200);
    expect(attaches.length).toBeGreaterThanOrEqual(2);
    expect(attaches.length).toBeLessThanOrEqual(3);
  });
});
