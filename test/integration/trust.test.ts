import * as grpc from '@grpc/grpc-js';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/cli/admin-client.js';
import { sleep } from '../../src/core/async.js';
import { devKill, PACKAGE_ROOT } from '../../src/dev/cluster.js';
import { chorusV1 } from '../../src/gossip/proto.js';
import type { LogEntry } from '../../src/log/entry.js';
import { cliEnv, cliTransportFor, grpcCredentials, TestCluster } from '../support/cluster.js';

type Gossip = grpc.Client & Record<string, (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => void>;

/**
 * The attacker: a gRPC client of a replica's Gossip service that sends whatever it likes. Its
 * channel credentials are made here and only here. The port takes only certificates the
 * shard's CA signed, so the attacker is a compromised member: a message claiming to come from
 * member X is sent with X's own certificate (what it then says is what is tested), and one
 * claiming any other name is sent with the CLI's certificate (a certificate the CA signed that
 * names no member).
 */
function forger(
  cluster: TestCluster,
  address: string,
): { call: (method: string, req: { from?: string; [field: string]: unknown }, certificateOf?: string) => Promise<{ err: grpc.ServiceError | null; reply: unknown }>; close: () => void } {
  const Gossip = chorusV1('chorus/v1/gossip.proto').Gossip!;
  const clients = new Map<string, Gossip>();
  const clientAs = (claimed: string) => {
    const member = cluster.replicas.find((r) => r.name === claimed);
    const key = member?.name ?? '';
    let client = clients.get(key);
    if (!client) {
      client = new Gossip(address, grpcCredentials(cluster.info, member?.tls)) as unknown as Gossip;
      clients.set(key, client);
    }
    return client;
  };
  return {
    call: (method, req, certificateOf = req.from ?? '') =>
      new Promise((resolve) => clientAs(certificateOf)[method]!(req, { deadline: Date.now() + 5000 }, (err, reply) => resolve({ err, reply }))),
    close: () => {
      for (const c of clients.values()) c.close();
    },
  };
}

const errorCode = (err: grpc.ServiceError | null) => String(err?.metadata?.get('chorus-error-code')[0] ?? '');

interface Status {
  maxLsn: number;
  partStoreBytes: number;
  members: Array<{ name: string; state: string; appliedWatermark: number }>;
  alarms: string[];
}

/** Forged gossip (entries, SWIM messages, digests) sent straight to a replica's gRPC port. */
describe('nothing from a peer is taken blindly', () => {
  let cluster: TestCluster;
  const admins: AdminClient[] = [];

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: {
        'gossip.probeIntervalMs': 200,
        'gossip.probeTimeoutMs': 200,
        'partStore.minRetentionMs': 1000,
        'partStore.gcIntervalMs': 300,
        // Small messages, so that catching up takes several exchanges.
        'gossip.maxMessageBytes': 65_536,
      },
    });
    for (const r of cluster.replicas) admins.push(new AdminClient(r.grpc, cluster.info.adminToken, cliTransportFor(cluster.info)));
    await cluster.onEvery('CREATE TABLE default.t (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id');
    for (let i = 0; i < 3; i++) expect((await cluster.chorus(i, { query: 'INSERT INTO default.t FORMAT TabSeparated', body: `2026-11-01\t${i}\n` })).status).toBe(200);
    await cluster.waitConverged('default.t', 'cityHash64(day, id)', 3, 10_000);
  });

  afterAll(async () => {
    for (const a of admins) a.close();
    await cluster?.stop();
  });

  const status = async (i: number): Promise<Status> => (await fetch(`${cluster.replica(i).http}/_chorus/status`)).json() as Promise<Status>;
  const entries = async (i: number) => (await admins[i]!.call<{ entries: Array<{ entry: LogEntry; state: string }> }>('listEntries', { limit: 10_000 })).entries;
  /** What a forged entry could change: rows, the log, and the files of the part store and of detached/. */
  const world = async () =>
    Promise.all(
      cluster.replicas.map(async (r, i) => ({
        rows: (await cluster.clickhouse(i, 'SELECT count(), sum(cityHash64(day, id)) FROM default.t')).trim(),
        log: (await entries(i)).map((e) => `${e.entry.lsn}:${e.entry.kind}:${e.entry.table}:${e.entry.partition}`),
        files: execFileSync('find', [r.dir, '(', '-path', '*/chorus/parts/*', '-o', '-path', '*/detached/*', ')', '-printf', '%P\n'], { encoding: 'utf8' })
          .split('\n')
          .filter(Boolean)
          .sort(),
      })),
    );

  const sha = (c: string) => c.repeat(64);
  const forgedInsert = (lsn: number, over: Partial<LogEntry> = {}): LogEntry => ({
    lsn,
    kind: 'insert',
    database: 'default',
    table: 't',
    partitionId: '202611',
    blockId: `202611_${'f'.repeat(32)}`,
    partName: '202611_9_9_0',
    checksumsSha256: sha('a'),
    rows: 1,
    bytes: 20,
    files: [
      { name: 'checksums.txt', size: 10, sha256: sha('a') },
      { name: 'data.bin', size: 10, sha256: sha('b') },
    ],
    origin: 'r1',
    allocatedAtMs: Date.now(),
    barrier: 0,
    partition: '',
    ...over,
  });
  const forgedDrop = (lsn: number, partition: string): LogEntry => ({
    ...forgedInsert(lsn),
    kind: 'drop_partition',
    partitionId: '',
    blockId: '!barrier:default.t',
    partName: '',
    checksumsSha256: '',
    rows: 0,
    bytes: 0,
    files: [],
    partition,
  });

  it('forged entries (a file named ../.., SQL in a partition, a table name with /, an LSN never allocated) change nothing anywhere and are counted', async () => {
    // GC empties the part stores once every member has applied everything: the files then stay put.
    for (let i = 0; i < 3; i++) await expect.poll(async () => (await status(i)).partStoreBytes, { timeout: 15_000, interval: 300 }).toBe(0);
    const before = await world();
    const next = await cluster.nextLsn();
    const forged: Array<[string, LogEntry]> = [
      ['file ../..', forgedInsert(next - 1, { files: [{ name: 'checksums.txt', size: 10, sha256: sha('a') }, { name: '../..', size: 10, sha256: sha('b') }] })],
      ['drop with a second statement', forgedDrop(next - 1, '1; DROP TABLE x')],
      ['drop with settings', forgedDrop(next - 1, 'tuple(1) SETTINGS max_threads = 1')],
      ['table with /', forgedInsert(next - 1, { table: '../t' })],
      ['LSN far beyond the next', forgedInsert(next + 1_000_000_000)],
    ];
    const refusedBefore = await cluster.metric(1, 'chorus_gossip_refused_entries_total');
    const r2 = forger(cluster, cluster.replica(1).grpc);
    try {
      for (const [why, entry] of forged) {
        const { err } = await r2.call('push', { from: 'r1', entries: [entry] });
        expect(err?.code, why).toBe(grpc.status.INVALID_ARGUMENT);
        expect(errorCode(err), why).toBe('CHORUS_INVALID_ENTRY');
      }
      // More entries than one message may carry: refused whole.
      const flood = await r2.call('push', { from: 'r1', entries: Array.from({ length: 501 }, () => forgedInsert(next - 1)) });
      expect(errorCode(flood.err)).toBe('CHORUS_INVALID_ENTRY');
      // A sender that is no member of the shard is refused before anything is read.
      const { err } = await r2.call('push', { from: 'mallory', entries: [forgedInsert(next - 1)] });
      expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      r2.close();
    }
    expect(await cluster.metric(1, 'chorus_gossip_refused_entries_total')).toBe(refusedBefore + forged.length + 501);
    expect(await cluster.metric(1, 'chorus_gossip_refused_messages_total', { rpc: 'push' })).toBe(1);
    expect(await cluster.metric(1, 'chorus_gossip_refused_entries_total', { reason: 'beyond_next_lsn' })).toBe(1);
    // Give gossip a few rounds to spread anything that might have been stored.
    await sleep(1500);
    expect(await world()).toEqual(before);
    expect(await cluster.nextLsn()).toBe(next);
  });

  it('an entry that differs from the one stored for its LSN raises an alarm in status, and the stored one stays', async () => {
    const stored = (await entries(1)).find((e) => e.entry.kind === 'insert')!.entry;
    const r2 = forger(cluster, cluster.replica(1).grpc);
    try {
      // An identical copy is no alarm.
      expect((await r2.call('push', { from: 'r1', entries: [stored] })).err).toBeNull();
      expect((await status(1)).alarms).toEqual([]);
      const { err } = await r2.call('push', { from: 'r1', entries: [{ ...stored, checksumsSha256: sha('e'), files: [{ name: 'checksums.txt', size: stored.bytes, sha256: sha('e') }] }] });
      expect(err).toBeNull();
    } finally {
      r2.close();
    }
    const alarms = (await status(1)).alarms;
    expect(alarms).toHaveLength(1);
    expect(alarms[0]).toContain(`LSN ${stored.lsn}`);
    expect(await cluster.metric(1, 'chorus_log_conflicts_total')).toBe(1);
    expect((await entries(1)).find((e) => e.entry.lsn === stored.lsn)!.entry.checksumsSha256).toBe(stored.checksumsSha256);
    // The operator sees it: chorus status lists the alarm and does not call the shard healthy.
    const cli = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'chorus.js'), 'status', '--grpc', cluster.replica(0).grpc], {
      encoding: 'utf8',
      env: { ...process.env, ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken },
    });
    expect(cli.status).toBe(3);
    expect(cli.stdout).toContain('ALARMS (1)');
    expect(cli.stdout).toContain(`r2: LSN ${stored.lsn}: r1 sent an entry`);
  });

  it('a forged SWIM message saying a member (or the receiver itself) is decommissioned changes nothing', async () => {
    const r1 = forger(cluster, cluster.replica(0).grpc);
    try {
      for (const name of ['r3', 'r1']) {
        const { err } = await r1.call('ping', { from: 'r2', updates: [{ name, state: 'decommissioned', incarnation: 1000 }] });
        expect(err).toBeNull();
        const viaPingReq = await r1.call('pingReq', { from: 'r2', target: 'r3', updates: [{ name, state: 'decommissioned', incarnation: 1000 }] });
        expect(viaPingReq.err).toBeNull();
      }
      const { err } = await r1.call('ping', { from: 'nobody', updates: [{ name: 'r3', state: 'dead', incarnation: 1000 }] });
      expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
      // A member that claims to be another member: its certificate says who it is.
      const impostor = await r1.call('ping', { from: 'r2', updates: [{ name: 'r3', state: 'dead', incarnation: 1000 }] }, 'r3');
      expect(impostor.err?.code).toBe(grpc.status.PERMISSION_DENIED);
      const digest = await r1.call('exchange', { from: 'r2', maxLsn: 1e12, knownWatermark: 1e12, knownAbove: [], appliedWatermark: 1e12 }, 'r3');
      expect(digest.err?.code).toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      r1.close();
    }
    await sleep(1000);
    // (A probe timing out on a loaded machine may make a member suspect for a moment: only
    // decommission is what the forgery was after.)
    for (let i = 0; i < 3; i++) {
      const members = (await status(i)).members;
      expect(members.map((m) => m.name)).toEqual(['r1', 'r2', 'r3']);
      expect(members.filter((m) => m.state === 'decommissioned'), cluster.replica(i).name).toEqual([]);
    }
  });

  it("a forged digest claiming another member's huge applied watermark changes nothing of what this replica believes, and GC keeps the copies", async () => {
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'STOP');
    try {
      for (let i = 10; i < 13; i++) expect((await cluster.chorus(0, { query: 'INSERT INTO default.t FORMAT TabSeparated', body: `2026-11-02\t${i}\n` })).status).toBe(200);
      const believed = (await status(0)).members.find((m) => m.name === 'r3')!.appliedWatermark;
      const r1 = forger(cluster, cluster.replica(0).grpc);
      try {
        // r2's certificate, r3's name: the digest is refused, whatever it says.
        const { err } = await r1.call('exchange', { from: 'r3', maxLsn: 1e12, knownWatermark: 1e12, knownAbove: [], appliedWatermark: 1e12 }, 'r2');
        expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
      } finally {
        r1.close();
      }
      // Past the minimum retention and a few GC rounds: the copies r3 still needs stay.
      await sleep(3000);
      const after = await status(0);
      expect(after.members.find((m) => m.name === 'r3')!.appliedWatermark).toBe(believed);
      expect(after.partStoreBytes).toBeGreaterThan(0);
    } finally {
      await devKill(cluster.info.dir, 'r3', 'sidecar', 'CONT');
    }
    // r3 catches up from those very copies.
    await cluster.waitConverged('default.t', 'cityHash64(day, id)', 6, 20_000);
  });

  it('the origin records only its own entry: an LSN it is allocated that already holds another entry is an alarm, not an acknowledgement', async () => {
    const next = await cluster.nextLsn();
    // Within the allowance r2 takes an LSN without asking ZooKeeper (the price of <= 1 request per insert).
    const r2 = forger(cluster, cluster.replica(1).grpc);
    try {
      expect((await r2.call('push', { from: 'r1', entries: [forgedInsert(next, { blockId: `202611_${'e'.repeat(32)}` })] })).err).toBeNull();
    } finally {
      r2.close();
    }
    const alarmsBefore = (await status(1)).alarms.length;
    const res = await cluster.chorus(1, { query: 'INSERT INTO default.t FORMAT TabSeparated', body: '2026-11-03\t99\n' });
    expect(res.status).toBe(500);
    expect(res.headers.get('x-chorus-error-code')).toBe('CHORUS_LOG_CONFLICT');
    const alarms = (await status(1)).alarms;
    expect(alarms).toHaveLength(alarmsBefore + 1);
    expect(alarms[0]).toContain(`LSN ${next}: this replica allocated it`);
    // The forged entry is what the log holds for that LSN; the insert's part was never attached here.
    expect((await entries(1)).find((e) => e.entry.lsn === next)!.entry.blockId).toBe(`202611_${'e'.repeat(32)}`);
    expect((await cluster.clickhouse(1, 'SELECT count() FROM default.t WHERE id = 99')).trim()).toBe('0');
  });

  it('a decommission first pulls everything the live members hold, over as many exchanges as it takes, and voids none of it', async () => {
    const stateIn = async (viewer: number, member: string) => (await status(viewer)).members.find((m) => m.name === member)?.state;
    await devKill(cluster.info.dir, 'r1', 'sidecar', 'STOP');
    try {
      // r3 allocates through r2 while r1 sleeps: r3's entries reach r2 only.
      await expect.poll(() => stateIn(2, 'r1'), { timeout: 10_000, interval: 100 }).not.toBe('alive');
      for (let i = 0; i < 100; i++) expect((await cluster.chorus(2, { query: 'INSERT INTO default.t FORMAT TabSeparated', body: `2026-11-04\t${1000 + i}\n` })).status).toBe(200);
      // r3 goes once r2 holds every part (an acknowledged part whose only copy is on a replica
      // that never comes back is lost, decommission or not).
      await expect.poll(async () => (await cluster.clickhouse(1, 'SELECT count() FROM default.t WHERE id >= 1000')).trim(), { timeout: 30_000, interval: 200 }).toBe('100');
      await devKill(cluster.info.dir, 'r3', 'sidecar', 'KILL');
    } finally {
      await devKill(cluster.info.dir, 'r1', 'sidecar', 'CONT');
    }
    // At once, before r1's own gossip catches up: the decommission must pull all of it itself.
    const decommissioned = await admins[0]!.call<{ voided: number[] }>('decommission', { replica: 'r3' }, 60_000);
    expect(decommissioned.voided ?? []).toEqual([]);
    const fromR2 = (await entries(1)).filter((e) => e.entry.origin === 'r3').map((e) => e.entry.lsn);
    const fromR1 = (await entries(0)).filter((e) => e.entry.origin === 'r3' && e.state !== 'voided').map((e) => e.entry.lsn);
    expect(fromR2.length).toBeGreaterThanOrEqual(100);
    expect(fromR1).toEqual(fromR2);
    // r1 applies them from r2's copies.
    await expect.poll(async () => (await cluster.clickhouse(0, 'SELECT count() FROM default.t WHERE id >= 1000')).trim(), { timeout: 30_000, interval: 300 }).toBe('100');
  });
});
