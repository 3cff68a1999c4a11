import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { AdminClient } from '../../src/cli/admin-client.js';
import { devKill, PACKAGE_ROOT } from '../../src/dev/cluster.js';
import type { LogEntry } from '../../src/log/entry.js';
import { cliEnv, cliTransportFor, TestCluster } from '../support/cluster.js';

interface Status {
  members: Array<{ name: string; state: string }>;
  partStoreBytes: number;
}

/** Failure detection and part-store GC on real processes. */
describe('membership and part-store GC', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: {
        testFaults: true,
        'gossip.probeIntervalMs': 200,
        'gossip.probeTimeoutMs': 200,
        'gossip.suspicionTimeoutMs': 2000,
        'partStore.minRetentionMs': 3000,
        'partStore.gcIntervalMs': 300,
      },
    });
    await cluster.onEvery('CREATE TABLE default.gc (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id');
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const status = async (i: number): Promise<Status> => (await fetch(`${cluster.replica(i).http}/_chorus/status`)).json() as Promise<Status>;
  /** Bytes of every file under a replica's part store, as find sees them on disk. */
  const onDisk = (i: number) =>
    execFileSync('find', [join(cluster.replica(i).dir, 'chorus', 'parts'), '-type', 'f', '-printf', '%s\n'], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .reduce((sum, n) => sum + Number(n), 0);
  const stateOf = async (viewer: number, member: string) => (await status(viewer)).members.find((m) => m.name === member)?.state;

  it('a sidecar stopped longer than the suspicion timeout is suspect, then dead; SIGCONT brings it back alive', async () => {
    // Alive once the shard has settled (a probe may time out while the processes start).
    await expect.poll(() => stateOf(0, 'r3'), { timeout: 15_000, interval: 200 }).toBe('alive');
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'STOP');
    try {
      const seen = new Set<string>();
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && !seen.has('dead')) {
        seen.add((await stateOf(0, 'r3'))!);
        await sleep(100);
      }
      expect(seen.has('suspect')).toBe(true);
      expect(seen.has('dead')).toBe(true);
      // r2's own suspicion timer may end a probe period after r1's: it must reach dead too.
      await expect.poll(() => stateOf(1, 'r3'), { timeout: 5_000, interval: 100 }).toBe('dead');
    } finally {
      // A stopped sidecar left behind would hang every later test of this file.
      await devKill(cluster.info.dir, 'r3', 'sidecar', 'CONT');
    }
    await expect.poll(() => stateOf(0, 'r3'), { timeout: 15_000, interval: 200 }).toBe('alive');
    await expect.poll(() => stateOf(1, 'r3'), { timeout: 15_000, interval: 200 }).toBe('alive');
  });

  it('once every member has applied everything, every part store holds 0 bytes on disk', async () => {
    for (let i = 0; i < 30; i++) {
      const res = await cluster.chorus(i % 3, { query: 'INSERT INTO default.gc FORMAT TabSeparated', body: `2026-11-01\t${i}\n` });
      expect(res.status).toBe(200);
    }
    expect((await cluster.waitConverged('default.gc', 'cityHash64(day, id)', 30, 10_000)).map((f) => f.count)).toEqual([30, 30, 30]);
    expect(onDisk(0)).toBeGreaterThan(0);
    for (let i = 0; i < 3; i++) {
      await expect.poll(() => onDisk(i), { timeout: 20_000, interval: 300 }).toBe(0);
      await expect.poll(async () => (await status(i)).partStoreBytes, { timeout: 5000, interval: 300 }).toBe(0);
    }
  });

  it('a member that is gone holds part copies back until it is decommissioned; then GC frees them, and exactly the LSNs nobody holds are voided', async () => {
    // r3 is allocated an LSN and dies before recording it: nobody holds that LSN, so the
    // decommission must void it, and nothing else.
    const orphan = await cluster.nextLsn();
    await cluster.armFaults(2, { crashAt: 'insert.after-allocate' } as never);
    await cluster.chorus(2, { query: 'INSERT INTO default.gc FORMAT TabSeparated', body: '2026-11-02\t999\n' }).catch(() => undefined);
    await expect.poll(() => cluster.nextLsn(), { timeout: 10_000, interval: 100 }).toBe(orphan + 1);
    for (let i = 100; i < 110; i++) {
      const res = await cluster.chorus(i % 2, { query: 'INSERT INTO default.gc FORMAT TabSeparated', body: `2026-11-02\t${i}\n` });
      expect(res.status).toBe(200);
    }
    await expect.poll(() => stateOf(0, 'r3'), { timeout: 15_000, interval: 200 }).toBe('dead');
    // Past the minimum retention, r3 has not applied them: the copies stay.
    await sleep(4000);
    expect(onDisk(0)).toBeGreaterThan(0);
    // A member that still answers is not decommissioned: it could acknowledge LSNs the decommission voids.
    const live = new AdminClient(cluster.replica(0).grpc, cluster.info.adminToken, cliTransportFor(cluster.info));
    try {
      await expect(live.call('decommission', { replica: 'r2' }, 30_000)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    } finally {
      live.close();
    }
    expect(await stateOf(0, 'r2')).toBe('alive');
    const out = execFileSync(process.execPath, [join(PACKAGE_ROOT, 'bin', 'chorus.js'), 'decommission', 'r3', '--grpc', cluster.replica(0).grpc], {
      encoding: 'utf8',
      env: { ...process.env, ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken },
    });
    expect(out).toBe(`r3 decommissioned; voided LSNs: ${orphan}\n`);
    expect(await stateOf(0, 'r3')).toBe('decommissioned');
    // r2 learns it from the log (a decommission entry), not from a SWIM rumour.
    await expect.poll(() => stateOf(1, 'r3'), { timeout: 10_000, interval: 200 }).toBe('decommissioned');
    for (const i of [0, 1]) {
      const admin = new AdminClient(cluster.replica(i).grpc, cluster.info.adminToken, cliTransportFor(cluster.info));
      try {
        await expect
          .poll(async () => {
            const log = (await admin.call<{ entries: Array<{ entry: LogEntry; state: string }> }>('listEntries', { limit: 10_000 })).entries;
            return {
              voided: log.filter((e) => e.state === 'voided').map((e) => `${e.entry.lsn}:${e.entry.origin}`),
              decommissions: log.filter((e) => e.entry.kind === 'decommission').map((e) => `${e.entry.member}:${e.state}`),
              unapplied: log.filter((e) => e.state !== 'applied' && e.state !== 'voided').length,
            };
          }, { timeout: 10_000, interval: 200 })
          .toEqual({ voided: [`${orphan}:r3`], decommissions: ['r3:applied'], unapplied: 0 });
      } finally {
        admin.close();
      }
    }
    for (const i of [0, 1]) await expect.poll(() => onDisk(i), { timeout: 20_000, interval: 300 }).toBe(0);
  });
});
