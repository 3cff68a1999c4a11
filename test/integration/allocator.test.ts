import { mkdtempSync, rmSync } from 'node:fs';

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Allocator } from '../../src/allocator/allocator.js';
import { applyBatch, windowEntries, type AllocatorState, type WindowLimits } from '../../src/allocator/window.js';
import { decodeHead, encodeHead } from '../../src/allocator/codec.js';
import { ZkSession, type ZkStat } from '../../src/allocator/zk.js';
import { ChorusError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { freePort, stopProcess } from '../../src/dev/processes.js';
import { scratchRoot } from '../../src/dev/cluster.js';
import { startZooKeeper } from '../../src/dev/zookeeper.js';

/** The allocator against a real ZooKeeper 3.8, started by the project's own harness. */
describe('allocator on real ZooKeeper', () => {
  let dir: string;
  let pid: number;
  let connect: string;
  const sessions: ZkSession[] = [];

  const session = () => {
    const zk = new ZkSession(connect, { sessionTimeoutMs: 10_000, timeoutMs: 10_000 }, silentLogger());
    zk.start();
    sessions.push(zk);
    return zk;
  };
  /** Small chunks, so that racing writers also race on sealing (a multi per 10 entries). */
  const WINDOW: WindowLimits = { entries: 1000, chunkEntries: 10, seconds: 0 };
  const allocator = (zk: ZkSession, path: string, window = WINDOW, observer = {}) =>
    new Allocator(zk, { path, window, maxBatch: 500, requestTimeoutMs: 10_000 }, silentLogger(), observer);
  /** The whole state as a member that has cached nothing reads it. */
  const readState = async (path: string): Promise<AllocatorState> => allocator(session(), path).read();

  beforeAll(async () => {
    dir = mkdtempSync(join(scratchRoot(), 'zk-'));
    const port = await freePort();
    pid = await startZooKeeper(dir, port);
    connect = `127.0.0.1:${port}`;
  });

  afterAll(async () => {
    for (const s of sessions) s.close();
    if (pid) await stopProcess(pid);
    rmSync(dir, { recursive: true, force: true });
  });

  it('two allocators racing on one znode hand out every LSN once and dedup across each other', async () => {
    const path = '/chorus/race/shard1';
    const a = allocator(session(), path);
    const b = allocator(session(), path);
    await a.init();
    await b.init();
    const requests = Array.from({ length: 200 }, (_, i) => ({ nonce: `n${i}`, origin: i % 2 ? 'a' : 'b', blockIds: [`p_${i % 150}`] }));
    const results = await Promise.all(requests.map((r, i) => (i % 2 ? a : b).allocate(r)));
    const fresh = results.flat().filter((r) => !r.duplicate).map((r) => r.lsn);
    expect(fresh.length).toBe(150);
    expect(new Set(fresh).size).toBe(150);
    expect(Math.max(...fresh)).toBe(150);
    // Every duplicate names the LSN its block was first given.
    const byBlock = new Map<string, number>();
    results.forEach((r, i) => {
      if (!r[0]!.duplicate) byBlock.set(requests[i]!.blockIds[0]!, r[0]!.lsn);
    });
    results.forEach((r, i) => expect(r[0]!.lsn).toBe(byBlock.get(requests[i]!.blockIds[0]!)));
    const zk = session();
    // /chorus/race, the head, and the 150 blocks sealed in chunks of 10: nothing per insert.
    expect(await zk.countZnodes('/chorus/race')).toBe(2 + 15);
  });

  it('a block whose LSN another member voided and released is allocated anew, with nothing else allocated meanwhile', async () => {
    // The allocating member answers duplicates without writing; from its cache alone it kept
    // answering "duplicate of the voided LSN" to every retry until some other insert came
    // (found by the chaos suite: an insert refused on a nearly full disk could never be retried).
    const path = '/chorus/voided/shard1';
    const allocating = allocator(session(), path);
    const origin = allocator(session(), path);
    await allocating.init();
    await origin.init();
    const [first] = await allocating.allocate({ nonce: 'try1', origin: 'r2', blockIds: ['p_voided'] });
    expect(first).toMatchObject({ duplicate: false });
    await origin.release([first!.lsn]);
    const [retry] = await allocating.allocate({ nonce: 'try2', origin: 'r2', blockIds: ['p_voided'] });
    expect(retry).toMatchObject({ duplicate: false, lsn: first!.lsn + 1 });
    // A duplicate of a block still in the window is still answered as one.
    expect(await allocating.allocate({ nonce: 'try3', origin: 'r3', blockIds: ['p_voided'] })).toEqual([{ lsn: retry!.lsn, duplicate: true, barrier: 0 }]);
  });

  it('a write whose reply was lost is recognised on retry by its nonce, never allocated twice', async () => {
    const path = '/chorus/lost/shard1';
    const zk = session();
    await zk.mkdirp(path);
    // What a lost reply leaves behind: the batch landed, but its sender never heard so.
    const { data, stat } = await zk.getData(path);
    const landed = applyBatch({ ...decodeHead(data), sealed: [] }, [{ nonce: 'lost-1', origin: 'r2', blockIds: ['p_a', 'p_b'] }], WINDOW).state;
    await zk.setData(path, encodeHead(landed), stat.version);
    const retrying = allocator(session(), path);
    await retrying.init();
    const result = await retrying.allocate({ nonce: 'lost-1', origin: 'r2', blockIds: ['p_a', 'p_b'] });
    expect(result).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    expect((await readState(path)).next).toBe(3);
    // Another request with the same blocks is a duplicate.
    expect(await retrying.allocate({ nonce: 'other', origin: 'r1', blockIds: ['p_a'] })).toEqual([{ lsn: 1, duplicate: true, barrier: 0 }]);
  });

  it('refuses with ALLOCATOR_UNAVAILABLE, allocating nothing, when ZooKeeper cannot be reached', async () => {
    const port = await freePort();
    const zk = new ZkSession(`127.0.0.1:${port}`, { sessionTimeoutMs: 4000, timeoutMs: 500 }, silentLogger());
    sessions.push(zk);
    const a = new Allocator(zk, { path: '/chorus/x/y', window: WINDOW, maxBatch: 10, requestTimeoutMs: 500 }, silentLogger());
    await expect(a.allocate({ nonce: 'n', origin: 'r1', blockIds: ['p_1'] })).rejects.toMatchObject({ code: 'ALLOCATOR_UNAVAILABLE' });
  });

  /**
   * A session to the real ZooKeeper whose setData replies can be lost: the write is sent (and
   * lands, or not), then the caller hears a timeout, as when the connection drops mid-call.
   */
  class LossySession extends ZkSession {
    lose: 'landed' | 'not-landed' | null = null;
    sent = 0;
    override async setData(path: string, data: Buffer, version: number): Promise<ZkStat> {
      if (this.lose === null) return super.setData(path, data, version);
      this.sent++;
      if (this.lose === 'landed') {
        await super.setData(path, data, version);
        this.lose = null; // one lost reply, then the connection is back
      }
      throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'ZooKeeper setData timed out (reply lost)');
    }
  }
  const lossy = () => {
    const zk = new LossySession(connect, { sessionTimeoutMs: 10_000, timeoutMs: 10_000 }, silentLogger());
    zk.start();
    sessions.push(zk);
    return zk;
  };

  it('a setData whose reply was lost after it landed: re-read, recognised by nonce, answered with its LSNs, nothing allocated twice', async () => {
    const path = '/chorus/unknown-landed/shard1';
    const zk = lossy();
    const a = new Allocator(zk, { path, window: WINDOW, maxBatch: 500, requestTimeoutMs: 10_000, unknownOutcomeRetryMs: 10_000 }, silentLogger());
    await a.init();
    zk.lose = 'landed';
    const result = await a.allocate({ nonce: 'landed-1', origin: 'r1', blockIds: ['p_a', 'p_b'] });
    expect(zk.sent).toBe(1);
    expect(result).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    const state = await readState(path);
    expect(state.next).toBe(3);
    expect(windowEntries(state).filter((e) => e.nonce === 'landed-1').map((e) => e.lsn)).toEqual([1, 2]);
  });

  it('a batch whose writes never confirm is answered, within a bound, with an error saying the outcome is unknown', async () => {
    const path = '/chorus/unknown-never/shard1';
    const zk = lossy();
    const a = new Allocator(zk, { path, window: WINDOW, maxBatch: 500, requestTimeoutMs: 500, unknownOutcomeRetryMs: 1500, maxQueued: 1 }, silentLogger());
    await a.init();
    zk.lose = 'not-landed';
    const started = Date.now();
    const first = a.allocate({ nonce: 'never-1', origin: 'r1', blockIds: ['p_x'] });
    // The queue is bounded: one more waits (the first is in its batch), the next is refused at once.
    const second = a.allocate({ nonce: 'never-2', origin: 'r1', blockIds: ['p_y'] });
    await expect(a.allocate({ nonce: 'never-3', origin: 'r1', blockIds: ['p_z'] })).rejects.toMatchObject({ code: 'ALLOCATOR_UNAVAILABLE', message: expect.stringMatching(/waiting for ZooKeeper already/) });
    await expect(first).rejects.toMatchObject({ code: 'ALLOCATOR_UNAVAILABLE', message: expect.stringMatching(/whether it landed is unknown.*deduplicated/) });
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(1500);
    expect(elapsed).toBeLessThan(500 + 1500 + 2000);
    expect(zk.sent).toBeGreaterThan(1); // it did retry while it could
    await expect(second).rejects.toMatchObject({ code: 'ALLOCATOR_UNAVAILABLE' });
    // Nothing landed; once ZooKeeper answers again, the same request is allocated once.
    zk.lose = null;
    expect((await readState(path)).next).toBe(1);
    expect(await a.allocate({ nonce: 'never-1', origin: 'r1', blockIds: ['p_x'] })).toEqual([{ lsn: 1, duplicate: false, barrier: 0 }]);
  });

  it('the window lives in a fixed handful of chunk znodes: one allocation writes a bounded number of bytes, and a member with nothing cached reads the whole window', async () => {
    const path = '/chorus/chunks/shard1';
    const writes: Array<{ kind: string; bytes: number }> = [];
    const window: WindowLimits = { entries: 200, chunkEntries: 20, seconds: 0 };
    const a = allocator(session(), path, window, { onZkRequest: (kind: string, bytes?: number) => bytes !== undefined && writes.push({ kind, bytes }) });
    await a.init();
    const block = (i: number) => `202611_${i}_${'0123456789abcdef'.repeat(2)}`;
    const znodeCounts: number[] = [];
    for (let i = 0; i < 600; i++) {
      await a.allocate({ nonce: `n${i}`, origin: `r${(i % 3) + 1}`, blockIds: [block(i)] });
      if (i % 100 === 99) znodeCounts.push(await session().countZnodes(path));
    }
    // The head plus ceil(200 / 20) + 1 chunks at most, and no more as allocations go on.
    expect(Math.max(...znodeCounts)).toBeLessThanOrEqual(1 + 11);
    expect(new Set(znodeCounts.slice(2)).size).toBe(1);
    // One write per allocation; every 20th is a multi that seals a chunk.
    expect(writes.length).toBe(600);
    expect(writes.filter((w) => w.kind === 'multi').length).toBe(30);
    // What one allocation sends is bounded by the chunk size (20 entries of about 18 bytes), not the window.
    expect(Math.max(...writes.filter((w) => w.kind === 'setData').map((w) => w.bytes))).toBeLessThan(20 * 20 + 120);
    // A member that cached nothing (a fresh session) reads head and chunks: the newest 200 blocks are
    // duplicates, older ones are allocated anew.
    const b = allocator(session(), path, window);
    await b.init();
    expect(await b.allocate({ nonce: 'x1', origin: 'r2', blockIds: [block(599), block(400), block(100)] })).toEqual([
      { lsn: 600, duplicate: true, barrier: 0 },
      { lsn: 401, duplicate: true, barrier: 0 },
      { lsn: 601, duplicate: false, barrier: 0 },
    ]);
    // The first member's cache is stale now: its next write conflicts, re-reads, and still deduplicates.
    expect(await a.allocate({ nonce: 'x2', origin: 'r1', blockIds: [block(100), block(598)] })).toEqual([
      { lsn: 601, duplicate: true, barrier: 0 },
      { lsn: 599, duplicate: true, barrier: 0 },
    ]);
  });

  it('reads a window Chorus wrote as JSON (format 1) and rewrites it in chunks on the next allocation', async () => {
    const path = '/chorus/format1/shard1';
    const zk = session();
    await zk.mkdirp(path);
    const blocks = Array.from({ length: 45 }, (_, i) => [`p_${i}`, i + 1, 'r1', `old${i}`]);
    const { stat } = await zk.getData(path);
    await zk.setData(path, Buffer.from(JSON.stringify({ v: 1, next: 46, w: blocks })), stat.version);
    const a = allocator(session(), path);
    await a.init();
    expect(await a.allocate({ nonce: 'new', origin: 'r2', blockIds: ['p_3', 'p_new'] })).toEqual([
      { lsn: 4, duplicate: true, barrier: 0 },
      { lsn: 46, duplicate: false, barrier: 0 },
    ]);
    const { data } = await zk.getData(path);
    expect(data![0]).not.toBe(0x7b);
    const state = await readState(path);
    expect(state.sealed.length).toBe(4);
    expect(windowEntries(state).map((e) => e.lsn)).toEqual(Array.from({ length: 46 }, (_, i) => i + 1));
  });
});
