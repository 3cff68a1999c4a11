import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Allocator } from '../../src/allocator/allocator.js';
import { Gossip } from '../../src/gossip/gossip.js';
import type { Peer } from '../../src/gossip/peers.js';
import type { Digest, LogEntry } from '../../src/log/entry.js';
import { LocalLog } from '../../src/log/store.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { insertEntry } from '../support/entries.js';

/** Entries of r2, the peer pulled from. */
const insert = (lsn: number, over: Partial<LogEntry> = {}) => insertEntry(lsn, 1, { origin: 'r2', ...over });

/**
 * A peer (r2) whose log is a real LocalLog, answering each exchange the way a real one does: what
 * the digest it is sent lacks, at most `perReply` entries. `beforeReply` runs between the digest
 * and the answer, where a push from that peer can cross the exchange.
 */
function peerWith(peerLog: LocalLog, perReply: number, beforeReply: (round: number) => void = () => undefined): Peer & { rounds: number } {
  const peer = {
    name: 'r2',
    rounds: 0,
    healthy: true,
    async push() {
      return { added: 0 };
    },
    async exchange(digest: Digest) {
      const round = peer.rounds++;
      const entries = peerLog.missingFrom(digest, perReply);
      beforeReply(round);
      return { digest: peerLog.digest('r2'), entries };
    },
  };
  return peer as unknown as Peer & { rounds: number };
}

describe('pulling everything a peer holds (decommission)', () => {
  let dir: string;
  let log: LocalLog;
  let peerLog: LocalLog;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-pull-'));
    log = new LocalLog(join(dir, 'r1'));
    peerLog = new LocalLog(join(dir, 'r2'));
  });
  afterEach(() => {
    log.close();
    peerLog.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const forgetfulDigest = () => ({ from: 'r1', maxLsn: 0, knownWatermark: 0, knownAbove: [], appliedWatermark: 0 });

  const gossipWith = (peer: Peer) =>
    new Gossip(
      { self: 'r1', intervalMs: 1000, rpcTimeoutMs: 1000, allocateTimeoutMs: 1000, maxEntriesPerMessage: 10, maxMessageBytes: 1 << 20, lsnAllowance: 1_000_000, swim: { probeIntervalMs: 1000, probeTimeoutMs: 500, suspicionTimeoutMs: 3000, indirectProbes: 1 } },
      [peer],
      log,
      { lastSeenNext: 1000, refreshNext: async () => 1000 } as unknown as Allocator,
      () => undefined,
      new Metrics(),
      pino({ level: 'silent' }),
    );

  it('finishes when an answer brings only entries a crossing push stored meanwhile', async () => {
    const held = Array.from({ length: 25 }, (_, i) => insert(i + 1));
    peerLog.addEntries(held, 'pending', 'r3');
    // The peer's own push of the first ten lands between our digest and its answer.
    const peer = peerWith(peerLog, 10, (round) => void (round === 0 && log.addEntries(held.slice(0, 10), 'pending', 'r2')));
    const pulled = await gossipWith(peer).pullAll(peer);
    expect(pulled).toBe(15);
    expect(log.digest('r1').maxLsn).toBe(25);
    expect(log.conflicts()).toEqual([]);
    expect(peer.rounds).toBe(4);
  });

  it('refuses, naming the conflict, when the peer sends a different entry for an LSN held here', async () => {
    log.addEntries([insert(1)], 'pending', 'r3');
    peerLog.addEntries([insert(1, { blockId: 'all_forged' })], 'pending', 'r3');
    const peer = peerWith(peerLog, 10);
    // A digest that claims nothing, so the other copy of LSN 1 is sent.
    log.digest = forgetfulDigest;
    await expect(gossipWith(peer).pullAll(peer)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringMatching(/conflict/) });
  });

  it('gives up, instead of looping, when the peer keeps answering with entries held here', async () => {
    log.addEntries([insert(1)], 'pending', 'r3');
    peerLog.addEntries([insert(1)], 'pending', 'r3');
    const peer = peerWith(peerLog, 10);
    log.digest = forgetfulDigest;
    await expect(gossipWith(peer).pullAll(peer)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringMatching(/already holds in 3 exchanges/) });
    expect(peer.rounds).toBe(3);
  });
});
