import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChorusError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { LocalLog } from '../../src/log/store.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { codeOf } from '../support/errors.js';
import { DEFAULT_QUORUM_TIMEOUT_MS, Quorum, quorumSettings, waitApplied, waitAppliedThrough, type QuorumPeer } from '../../src/replication/quorum.js';
import { insertEntry } from '../support/entries.js';

describe('insert_quorum settings', () => {
  it("reads ClickHouse's settings and their defaults", () => {
    expect(quorumSettings({})).toBeUndefined();
    expect(quorumSettings({ insert_quorum: '0' })).toBeUndefined();
    expect(quorumSettings({ insert_quorum: '1' })).toBeUndefined();
    expect(quorumSettings({ insert_quorum: '2' })).toEqual({ replicas: 2, timeoutMs: DEFAULT_QUORUM_TIMEOUT_MS });
    expect(quorumSettings({ insert_quorum: 'AUTO', insert_quorum_timeout: '1500', insert_quorum_parallel: '0' })).toEqual({ replicas: 'auto', timeoutMs: 1500 });
  });

  it('refuses what is not a whole number, with BAD_SETTING', () => {
    const bad: Array<Record<string, string>> = [{ insert_quorum: 'two' }, { insert_quorum: '-1' }, { insert_quorum: '2', insert_quorum_timeout: '1.5' }, { insert_quorum: '2', insert_quorum_parallel: 'yes' }, { insert_quorum_timeout: '' }];
    for (const params of bad) {
      expect(codeOf(() => quorumSettings(params))).toBe('BAD_SETTING');
    }
  });
});

describe('waiting on the local log', () => {
  let dir: string;
  let log: LocalLog;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-quorum-'));
    log = new LocalLog(dir);
  });

  afterEach(() => {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers when the entries become applied, not at the timeout', async () => {
    log.addEntries([insertEntry(1), insertEntry(2)], 'pending', 'r1');
    const started = Date.now();
    const waiting = waitApplied(log, [1, 2], 5000);
    setTimeout(() => log.markApplied(insertEntry(1), 11), 50);
    setTimeout(() => log.markApplied(insertEntry(2), 12), 100);
    expect(await waiting).toEqual([1, 2]);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('answers with what is applied when the time is up, and a voided LSN never counts as applied', async () => {
    log.addEntries([insertEntry(1), insertEntry(2)], 'pending', 'r1');
    log.markApplied(insertEntry(1), 11);
    log.setState(2, 'voided');
    expect(await waitApplied(log, [1, 2], 100)).toEqual([1]);
  });

  it('waits for the applied watermark to pass an LSN (voids included), or says it did not', async () => {
    log.addEntries([insertEntry(1), insertEntry(2), insertEntry(3)], 'pending', 'r1');
    expect(await waitAppliedThrough(log, 2, 50)).toBe(false);
    const waiting = waitAppliedThrough(log, 2, 5000);
    log.markApplied(insertEntry(2), 12);
    setTimeout(() => log.setState(1, 'voided'), 30);
    expect(await waiting).toBe(true);
    const aborted = new AbortController();
    const abandoned = waitAppliedThrough(log, 3, 5000, aborted.signal);
    aborted.abort();
    expect(await abandoned).toBe(false);
  });
});

describe('the origin waiting for its peers', () => {
  /** A peer that has applied the LSNs after `delayMs`, or never (null), or fails `failures` calls first. */
  const peer = (name: string, delayMs: number | null, failures = 0): QuorumPeer & { calls: number } => ({
    name,
    calls: 0,
    async waitApplied(_from, lsns, timeoutMs, signal) {
      this.calls++;
      if (this.calls <= failures) throw new ChorusError('PEER_UNAVAILABLE', `${name} is away`);
      const wait = delayMs === null ? timeoutMs : Math.min(delayMs, timeoutMs);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
      return delayMs !== null && delayMs <= timeoutMs ? lsns : [];
    },
  });
  const quorumOf = (peers: QuorumPeer[], live = peers.length + 1, local: QuorumPeer = peer('r1', 0), liveNames = () => [local, ...peers].map((p) => p.name)) =>
    new Quorum({ local, peers: () => peers, liveMembers: () => live, liveNames, retryMs: 20, metrics: new Metrics(), logger: silentLogger() });

  it('waits for every live member, and stops waiting for one that dies meanwhile', async () => {
    const alive = new Set(['r1', 'r2', 'r3']);
    const q = quorumOf([peer('r2', 50), peer('r3', null)], 3, peer('r1', 0), () => [...alive]);
    setTimeout(() => alive.delete('r3'), 300);
    const started = Date.now();
    expect((await q.waitEveryLive([5], 5000)).replicas.sort()).toEqual(['r1', 'r2']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    const err = (await quorumOf([peer('r2', 0), peer('r3', null)]).waitEveryLive([5], 200).catch((e: unknown) => e)) as ChorusError;
    expect(err.code).toBe('QUORUM_TIMEOUT');
    expect(err.message).toMatch(/not applied on r3/);
  });

  it('is met by the first peers to answer, counting the origin', async () => {
    const result = await quorumOf([peer('r2', 400), peer('r3', 10)]).wait([5], 2, 5000);
    expect(result.replicas).toEqual(['r1', 'r3']);
  });

  it('counts this replica only once it has applied the LSNs too (a deduplicated retry may wait for them here)', async () => {
    const result = await quorumOf([peer('r2', 0), peer('r3', 300)], 3, peer('r1', 150)).wait([5], 2, 5000);
    expect(result.replicas).toEqual(['r2', 'r1']);
    const err = (await quorumOf([peer('r2', 0), peer('r3', null)], 3, peer('r1', null)).wait([5], 2, 200).catch((e: unknown) => e)) as ChorusError;
    expect(err.code).toBe('QUORUM_TIMEOUT');
    expect(err.message).toMatch(/attached on 1 of the 2 replicas asked for \(r2\)/);
  });

  it('keeps asking a peer that fails until it answers', async () => {
    const flaky = peer('r2', 0, 3);
    const result = await quorumOf([flaky, peer('r3', null)]).wait([5], 2, 5000);
    expect(result.replicas).toEqual(['r1', 'r2']);
    expect(flaky.calls).toBe(4);
  });

  it('times out with QUORUM_TIMEOUT naming who holds the insert', async () => {
    const started = Date.now();
    const err = (await quorumOf([peer('r2', 0), peer('r3', null)]).wait([5, 6], 3, 300).catch((e: unknown) => e)) as ChorusError;
    expect(err.code).toBe('QUORUM_TIMEOUT');
    expect(err.message).toMatch(/LSN 5, 6 .* attached on 2 of the 3 replicas asked for \(r1, r2\)/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
  });

  it('resolves auto to a majority of live members, and refuses more replicas than members', () => {
    const q = quorumOf([peer('r2', 0), peer('r3', 0)], 2);
    expect(q.replicasNeeded({ replicas: 'auto', timeoutMs: 1 })).toBe(2);
    expect(quorumOf([peer('r2', 0), peer('r3', 0)], 3).replicasNeeded({ replicas: 'auto', timeoutMs: 1 })).toBe(2);
    expect(q.replicasNeeded({ replicas: 3, timeoutMs: 1 })).toBe(3);
    expect(codeOf(() => q.replicasNeeded({ replicas: 4, timeoutMs: 1 }))).toBe('TOO_FEW_REPLICAS');
  });
});
