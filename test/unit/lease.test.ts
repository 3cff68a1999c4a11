import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ZooKeeperAwayError } from '../../src/allocator/allocator.js';
import { Leases } from '../../src/allocator/lease.js';
import { applyBatch, EMPTY_STATE } from '../../src/allocator/window.js';
import { silentLogger } from '../../src/core/logger.js';
import { partlessEntry, voidEntry, type LogEntry } from '../../src/log/entry.js';
import { LocalLog } from '../../src/log/store.js';
import { validateEntry } from '../../src/log/validate.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { insertEntry } from '../support/entries.js';

const lease = (lsn: number, origin: string, size: number, closes: number[] = [], used: number[] = []): LogEntry => ({
  ...partlessEntry('lease', origin, { leaseSize: size || undefined, closesLeases: closes.length ? closes : undefined, usedLsns: used.length ? used : undefined }),
  lsn,
  allocatedAtMs: 1,
  barrier: 0,
});

describe('leases in the allocator window', () => {
  it('reserves LSNs after the entry that asked for them, once: a retried request gets its entry back and reserves nothing more', () => {
    const limits = { entries: 10, chunkEntries: 10, seconds: 0 };
    const first = applyBatch(EMPTY_STATE, [{ nonce: 'a', origin: 'r1', blockIds: ['p_1'] }, { nonce: 'l', origin: 'r2', blockIds: [null], reserve: 5 }, { nonce: 'b', origin: 'r1', blockIds: ['p_2'] }], {
      ...limits,
    });
    expect(first.results.map((r) => r[0]!.lsn)).toEqual([1, 2, 8]);
    expect(first.state.next).toBe(9);
    const retry = applyBatch(first.state, [{ nonce: 'l', origin: 'r2', blockIds: [null], reserve: 5 }], limits);
    expect(retry.results[0]![0]!.lsn).toBe(2);
    expect(retry.changed).toBe(false);
    expect(retry.state.next).toBe(9);
  });
});

describe('lease entries', () => {
  const ctx = { members: new Set(['r1', 'r2']) };

  it('validates a lease: it reserves or closes, closes only lower LSNs, carries nothing of a part', () => {
    expect(validateEntry(lease(10, 'r1', 5, [3], [4, 5]), ctx)).toMatchObject({ leaseSize: 5, closesLeases: [3], usedLsns: [4, 5] });
    expect(() => validateEntry(lease(10, 'r1', 0), ctx)).toThrow(/neither reserves/);
    expect(() => validateEntry(lease(10, 'r1', 5, [12]), ctx)).toThrow(/closesLeases/);
    expect(() => validateEntry({ ...lease(10, 'r1', 5), table: 't' }, ctx)).toThrow(/carries table/);
    expect(() => validateEntry({ ...insertEntry(10), leaseSize: 3 }, ctx)).toThrow(/carries leaseSize/);
    expect(() => validateEntry({ ...lease(10, 'r1', 5), leased: true }, ctx)).toThrow(/carries leased/);
    expect(validateEntry({ ...insertEntry(10), leased: true }, ctx).leased).toBe(true);
    expect(() => validateEntry({ ...voidEntry(10, 'r1'), closesLeases: [3] }, ctx)).toThrow(/carries closesLeases/);
  });
});

describe('leases in the local log', () => {
  let dir: string;
  let log: LocalLog;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-lease-'));
    log = new LocalLog(dir, { dedupWindowMs: 3_600_000 });
  });

  afterEach(() => {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const applied = (...lsns: number[]) => lsns.forEach((lsn) => log.setState(lsn, 'applied'));

  it('holds the watermarks at an open lease, steps over what its closing says is unused, and waits for what it says is used', () => {
    log.addEntries([insertEntry(1), lease(2, 'r2', 4), insertEntry(7)], 'pending', 'r2');
    applied(1, 7);
    expect(log.watermarks()).toEqual({ known: 2, applied: 2, readable: 7 });
    // r2 closes its lease, having used LSN 4; LSN 4 has not arrived here yet.
    log.addEntries([lease(8, 'r2', 3, [2], [4])], 'pending', 'r2');
    expect(log.watermarks()).toMatchObject({ known: 3, applied: 3 });
    log.addEntries([insertEntry(4, 1, { origin: 'r2', leased: true })], 'pending', 'r2');
    expect(log.watermarks()).toMatchObject({ known: 8, applied: 3 });
    applied(4);
    expect(log.watermarks()).toEqual({ known: 8, applied: 8, readable: 8 });
    // Survives a restart.
    log.close();
    log = new LocalLog(dir);
    expect(log.watermarks()).toEqual({ known: 8, applied: 8, readable: 8 });
  });

  it('takes a closing only from the lease owner', () => {
    log.addEntries([lease(1, 'r2', 3), insertEntry(5), lease(6, 'r1', 1, [1])], 'pending', 'r1');
    applied(5);
    expect(log.watermarks().known).toBe(1);
    expect(log.leaseOrphans('r2')).toEqual([2, 3, 4]);
  });

  it('reports two entries of one block when one was allocated on a lease, on every replica that holds both, and not once one is voided', () => {
    log.addEntries([insertEntry(3, 1, { blockId: 'all_same', origin: 'r1', leased: true })], 'pending', 'r1');
    log.addEntries([insertEntry(9, 1, { blockId: 'all_same', origin: 'r2', leased: true })], 'pending', 'r2');
    // Not leased: an old block sent again after the window forgot it, which is no duplicate to report.
    log.addEntries([insertEntry(10, 1, { blockId: 'all_other' }), insertEntry(11, 1, { blockId: 'all_other' })], 'pending', 'r2');
    // Leased, but further apart than the dedup window (an hour here): no duplicate either.
    log.addEntries([insertEntry(12, 1, { blockId: 'all_old', allocatedAtMs: 1 }), insertEntry(13, 1, { blockId: 'all_old', leased: true, allocatedAtMs: 2 + 3_600_000 })], 'pending', 'r2');
    expect(log.leaseDuplicates().map((d) => [d.lsn, d.duplicateOf, d.table, d.origins])).toEqual([[9, 3, 'default.t', ['r2', 'r1']]]);
    expect(log.holdersOf('all_same').map((h) => [h.lsn, h.leased])).toEqual([
      [3, true],
      [9, true],
    ]);
  });
});

describe('the lease keeper', () => {
  let dir: string;
  let log: LocalLog;
  let zookeeper: 'there' | 'away';
  let next: number;
  let leases: Leases;
  const announced: LogEntry[] = [];

  const record = (entries: LogEntry[]) => {
    log.addEntries(entries, 'stored', 'local');
    for (const e of entries) if (e.kind === 'insert') log.setState(e.lsn, 'applied');
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-lease-'));
    log = new LocalLog(dir);
    zookeeper = 'there';
    next = 1;
    announced.length = 0;
    leases = new Leases(
      { self: 'r1', size: 4, renewMs: 60_000, probeMs: 0, dedupWindowMs: 3_600_000 },
      {
        log,
        allocate: async (request) => {
          if (zookeeper === 'away') throw new ZooKeeperAwayError('ZooKeeper stopped by the test');
          return request.blockIds.map(() => ({ lsn: next++, duplicate: false, barrier: 0 }));
        },
        takeLease: async (size, closes, used) => {
          if (zookeeper === 'away') throw new ZooKeeperAwayError('ZooKeeper stopped by the test');
          const entry = lease(next, 'r1', size, closes, used);
          next += 1 + size;
          record([entry]);
          return entry;
        },
        announce: (entries) => announced.push(...entries),
        metrics: new Metrics(),
        logger: silentLogger(),
      },
    );
  });

  afterEach(() => {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const insert = async (blockId: string) => {
    const nonce = `n-${blockId}-${Math.random()}`;
    const [a] = await leases.allocateInsert({ nonce, origin: 'r1', blockIds: [blockId] }, { database: 'default', table: 't' });
    if (!a!.duplicate) record([insertEntry(a!.lsn, 1, { blockId, leased: a!.leased, allocatedAtMs: Date.now() })]);
    leases.done(nonce);
    return a!;
  };

  it('allocates through ZooKeeper while it is there, on the lease once it is away, and deduplicates there against the log', async () => {
    await leases.tick();
    expect(leases.current()).toMatchObject({ first: 2, last: 5 });
    expect(await insert('all_a')).toEqual({ lsn: 6, duplicate: false, barrier: 0 });
    zookeeper = 'away';
    expect(await insert('all_b')).toEqual({ lsn: 2, duplicate: false, barrier: 0, leased: true });
    expect(leases.status()).toMatchObject({ zookeeperAway: true, free: 3, used: 1 });
    // A retry of a block stored before the outage or on the lease: its first LSN.
    expect(await insert('all_a')).toMatchObject({ lsn: 6, duplicate: true });
    expect(await insert('all_b')).toMatchObject({ lsn: 2, duplicate: true });
    await insert('all_c');
    await insert('all_d');
    await insert('all_e');
    await expect(insert('all_f')).rejects.toThrow(/no leased LSN left/);
    // Back: the probe takes a new lease (the old one is all used: nothing of it to close).
    zookeeper = 'there';
    await leases.tick();
    expect(leases.status()).toMatchObject({ zookeeperAway: false, first: 8, last: 11, free: 4 });
    expect(log.get(7)!.entry.closesLeases).toBeUndefined();
    // A block stored on the lease is still found when it comes again through ZooKeeper's path.
    expect(await insert('all_c')).toMatchObject({ lsn: 3, duplicate: true });
    // Away again, one LSN used. Back: the probe takes a new lease, and the next round closes
    // the one used while away with an entry that reserves nothing, naming the LSN it used.
    zookeeper = 'away';
    await expect(insert('all_g')).resolves.toMatchObject({ lsn: 8, leased: true });
    zookeeper = 'there';
    await leases.tick();
    expect(leases.status()).toMatchObject({ zookeeperAway: false, first: 13, last: 16 });
    expect(log.get(12)!.entry.closesLeases).toBeUndefined();
    await leases.tick();
    expect(log.get(17)!.entry).toMatchObject({ kind: 'lease', closesLeases: [7], usedLsns: [8] });
    expect(log.get(17)!.entry.leaseSize).toBeUndefined();
    expect(log.watermarks().known).toBe(12);
    expect(leases.current()!.lsn).toBe(12);
  });

  it('closes a lease that recovery recorded late (its allocation landed, its record failed), so it never stays a gap', async () => {
    await leases.tick();
    // The next lease's allocation lands (LSN 6, reserving 7-10) but its record fails, as on a full disk.
    zookeeper = 'there';
    const lost = lease(next, 'r1', 4, [1]);
    next += 5;
    record([{ ...partlessEntry('truncate', 'r2', { database: 'default', table: 't', blockId: '!barrier:default.t' }), lsn: next++, allocatedAtMs: 1, barrier: 0 }]);
    await leases.tick();
    expect(leases.current()!.lsn).toBe(12);
    // Recovery records the lost one afterwards, below the lease in use: the next round closes it.
    record([lost]);
    expect(log.watermarks().known).toBe(6);
    await leases.tick();
    expect(log.get(17)!.entry).toMatchObject({ kind: 'lease', closesLeases: [6] });
    expect(log.watermarks().known).toBe(12);
  });

  it('refuses to put on the lease a block whose earlier try here still waits to learn whether ZooKeeper allocated it', async () => {
    await leases.tick();
    const { lsn: _lsn, allocatedAtMs: _at, barrier: _barrier, ...draft } = insertEntry(0, 1, { blockId: 'all_x' });
    log.recordIntent('first-try', [{ dir: '', entry: draft }]);
    zookeeper = 'away';
    await expect(insert('all_x')).rejects.toThrow(/still waits for ZooKeeper/);
    expect(leases.status()).toMatchObject({ free: 4 });
    // Once recovery resolved that try (nothing was allocated to it), the block goes on the lease.
    log.dropIntent('first-try');
    await expect(insert('all_x')).resolves.toMatchObject({ lsn: 2, leased: true });
  });

  it('puts a leased insert above every drop of its table known here', async () => {
    await leases.tick();
    record([{ ...partlessEntry('truncate', 'r2', { database: 'default', table: 't', blockId: '!barrier:default.t' }), lsn: 3, allocatedAtMs: 1, barrier: 0 }]);
    zookeeper = 'away';
    const a = await insert('all_a');
    expect(a).toMatchObject({ lsn: 4, barrier: 3, leased: true });
  });

  it('replaces a lease that a drop lies above at once, and one left from before a restart, closing the old ones unused', async () => {
    await leases.tick();
    record([{ ...partlessEntry('truncate', 'r2', { database: 'default', table: 't', blockId: '!barrier:default.t' }), lsn: next++, allocatedAtMs: 1, barrier: 0 }]);
    await leases.tick();
    expect(log.get(7)!.entry).toMatchObject({ kind: 'lease', leaseSize: 4, closesLeases: [1] });
    expect(log.get(7)!.entry.usedLsns).toBeUndefined();
    expect(log.watermarks().known).toBe(7);
    // Nothing to replace now.
    await leases.tick();
    expect(leases.current()!.lsn).toBe(7);
  });
});
