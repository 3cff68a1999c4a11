import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devKill, devStart } from '../../src/dev/cluster.js';
import { sleep } from '../../src/core/async.js';
import { runCli } from '../support/built-cli.js';
import { cliEnv, TestCluster } from '../support/cluster.js';

/**
 * Issue 13's inserts through a ZooKeeper outage, against real ZooKeeper and ClickHouse
 * processes: with leases on, inserts go on while ZooKeeper is stopped, on LSNs each replica
 * reserved beforehand; retries are deduplicated against what the replica's log holds; a retry
 * that reached another replica before gossip did is stored twice and reported by every
 * replica; once ZooKeeper is back every replica converges and the unused leased LSNs are voided.
 */

const TABLE = 'default.leased';
const DDL = `CREATE TABLE ${TABLE} (day Date, id UInt64, v String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;
const ROW_HASH = 'cityHash64(id, v)';
const LEASE_SIZE = 150;

interface Status {
  maxLsn: number;
  appliedWatermark: number;
  lease: { size: number; first: number; last: number; free: number; used: number; zookeeperAway: boolean; allocatedOnLease: number };
  leaseDuplicates: Array<{ lsn: number; duplicateOf: number; table: string; origins: string[] }>;
  alarms: string[];
  ready: boolean;
}

describe('inserts while ZooKeeper is away (leases)', () => {
  let cluster: TestCluster;
  let id = 0;
  const row = (v = 'x') => `2026-11-01\t${++id}\t${v}\n`;

  const status = async (i: number): Promise<Status> => (await fetch(`${cluster.replica(i).http}/_chorus/status`)).json() as Promise<Status>;
  const insert = async (i: number, body: string) => {
    const res = await cluster.chorus(i, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body });
    return { status: res.status, text: await res.text(), lsn: Number(res.headers.get('x-chorus-lsn')) };
  };
  const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(200);
    }
  };

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: { testFaults: true, 'zookeeper.leaseSize': LEASE_SIZE, 'zookeeper.leaseRenewMs': 2000, 'zookeeper.leaseAfterMs': 500 },
    });
    await cluster.onEvery(DDL);
    await waitFor('every replica to hold a lease', async () => (await Promise.all([0, 1, 2].map(status))).every((s) => s.lease.first > 0 && s.lease.free === LEASE_SIZE));
  });

  afterAll(async () => {
    if (!process.env.CHORUS_TEST_KEEP) await cluster?.stop();
  });

  it('takes 200 inserts with ZooKeeper stopped, deduplicates retries, reports the duplicates it could not see, and converges once it is back', async () => {
    for (let i = 0; i < 3; i++) expect((await insert(i, row())).status).toBe(200);
    const leases = await Promise.all([0, 1, 2].map(status));
    const leaseOf = (i: number) => leases[i]!.lease;

    await devKill(cluster.info.dir, '', 'zookeeper', 'KILL');

    // 200 inserts over the three replicas, four at a time.
    const answers: Array<{ replica: number; body: string; lsn: number }> = [];
    let next = 0;
    const bodies = Array.from({ length: 200 }, () => row());
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < bodies.length) {
          const n = next++;
          const r = await insert(n % 3, bodies[n]!);
          expect(r.status, r.text).toBe(200);
          answers.push({ replica: n % 3, body: bodies[n]!, lsn: r.lsn });
        }
      }),
    );
    // Every LSN lies in the lease of the replica that took the insert.
    for (const a of answers) {
      expect(a.lsn).toBeGreaterThanOrEqual(leaseOf(a.replica).first);
      expect(a.lsn).toBeLessThanOrEqual(leaseOf(a.replica).last);
    }
    expect(new Set(answers.map((a) => a.lsn)).size).toBe(200);
    const during = await Promise.all([0, 1, 2].map(status));
    expect(during.map((s) => s.lease.zookeeperAway)).toEqual([true, true, true]);
    expect(during.every((s) => s.ready)).toBe(true);
    // `chorus status` says so, and exits 3 (degraded): the leases run out.
    const shown = await runCli(['status', '--grpc', cluster.replica(0).grpc], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
    expect(shown.code, shown.stderr).toBe(3);
    expect(shown.stdout).toMatch(/LEASES[^\n]*\n  r1: LSN \d+-\d+, \d+ free, \d+ used; ZooKeeper away since/);

    // Retries through the same replica: answered as duplicates of the first LSN, stored once.
    for (const a of answers.slice(0, 9)) {
      const r = await insert(a.replica, a.body);
      expect(r.status, r.text).toBe(200);
      expect(r.lsn).toBe(a.lsn);
    }
    // A retry through another replica once gossip brought the entry there: deduplicated too.
    const early = answers.slice(0, 3);
    await waitFor('the first inserts to reach every replica', async () => {
      const counts = await Promise.all([0, 1, 2].map(async (i) => Number((await cluster.clickhouse(i, `SELECT count() FROM ${TABLE} WHERE id IN (${early.map((a) => a.body.split('\t')[1]).join(',')})`)).trim())));
      return counts.every((c) => c === early.length);
    });
    for (const a of early) {
      const r = await insert((a.replica + 1) % 3, a.body);
      expect(r.status, r.text).toBe(200);
      expect(r.lsn).toBe(a.lsn);
    }

    // A DROP PARTITION needs ZooKeeper (it orders against every insert): refused, nothing dropped.
    const drop = await cluster.chorus(0, { query: `ALTER TABLE ${TABLE} DROP PARTITION 202611` });
    expect(drop.status).toBe(503);
    expect(await drop.text()).toContain('ALLOCATOR_UNAVAILABLE');

    // Provoked: replicas 1 and 2 cut from gossip, the same rows sent to both. Neither can know.
    await cluster.armFaults(0, { isolateGossip: true });
    await cluster.armFaults(1, { isolateGossip: true });
    const provoked: Array<[number, number]> = [];
    for (let n = 0; n < 3; n++) {
      const body = row('twice');
      const first = await insert(0, body);
      const second = await insert(1, body);
      expect(first.status, first.text).toBe(200);
      expect(second.status, second.text).toBe(200);
      expect(second.lsn).not.toBe(first.lsn);
      provoked.push([Math.max(first.lsn, second.lsn), Math.min(first.lsn, second.lsn)]);
    }
    await cluster.armFaults(0, { isolateGossip: false });
    await cluster.armFaults(1, { isolateGossip: false });

    await devStart(cluster.info.dir, '', 'zookeeper');

    const expected = 3 + 200 + 2 * provoked.length;
    const fingerprints = await cluster.waitConverged(TABLE, ROW_HASH, expected, 90_000);
    expect(new Set(fingerprints.map((f) => `${f.count}:${f.hash}`)).size).toBe(1);
    expect(fingerprints[0]!.count).toBe(expected);

    // Every replica reports exactly the provoked pairs, and nothing else.
    const want = provoked.map(([lsn, of]) => `${lsn}:${of}`).sort();
    await waitFor('every replica to report the provoked duplicates', async () =>
      (await Promise.all([0, 1, 2].map(status))).every((s) => JSON.stringify(s.leaseDuplicates.map((d) => `${d.lsn}:${d.duplicateOf}`).sort()) === JSON.stringify(want)),
    );
    const after = await Promise.all([0, 1, 2].map(status));
    for (const s of after) {
      expect(s.leaseDuplicates.every((d) => d.table === TABLE)).toBe(true);
      expect(s.alarms).toEqual([]);
    }
    expect(await cluster.metric(0, 'chorus_lease_duplicates')).toBe(provoked.length);
    expect(await cluster.metric(0, 'chorus_lease_allocations_total')).toBeGreaterThan(0);

    // ZooKeeper is back: inserts go through it again, and a block stored on a lease is still
    // deduplicated when it comes again through ZooKeeper's path.
    await waitFor('every replica to leave its lease', async () => (await Promise.all([0, 1, 2].map(status))).every((s) => !s.lease.zookeeperAway));
    const retry = await insert(2, answers[0]!.body);
    expect(retry.status, retry.text).toBe(200);
    expect(retry.lsn).toBe(answers[0]!.lsn);
    const last = await insert(0, row());
    expect(last.status, last.text).toBe(200);
    expect(last.lsn).toBeGreaterThan(Math.max(...[0, 1, 2].map((i) => leaseOf(i).last)));

    // No gap waits forever: every LSN the outage's leases reserved is used or voided, on every
    // replica, and the applied watermark passes the last insert.
    await waitFor('the leased LSNs to be used or voided everywhere', async () =>
      (await Promise.all([0, 1, 2].map(status))).every((s) => s.appliedWatermark >= last.lsn),
    );
    expect((await cluster.waitConverged(TABLE, ROW_HASH, expected + 1, 30_000)).map((f) => f.count)).toEqual([expected + 1, expected + 1, expected + 1]);
  });

  it('a sidecar killed while ZooKeeper is away starts again on its lease: it serves reads, takes inserts, and catches up once ZooKeeper is back', async () => {
    const count = async (i: number) => Number((await cluster.clickhouse(i, `SELECT count() FROM ${TABLE}`)).trim());
    const before = await count(0);
    const { lease } = await status(2);
    await devKill(cluster.info.dir, '', 'zookeeper', 'KILL');
    await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'KILL');
    const bodies = [row(), row()];
    expect((await insert(0, bodies[0]!)).status).toBe(200);
    // Started again with ZooKeeper still away: devStart returns once /readyz answers ready.
    await devStart(cluster.info.dir, cluster.replica(2).name, 'sidecar');
    const onLease = await insert(2, bodies[1]!);
    expect(onLease.status, onLease.text).toBe(200);
    expect(onLease.lsn).toBeGreaterThanOrEqual(lease.first);
    expect(onLease.lsn).toBeLessThanOrEqual(lease.last);
    const read = await cluster.chorus(2, { query: `SELECT count() FROM ${TABLE} FORMAT TabSeparated` });
    expect(read.status).toBe(200);
    expect(Number((await read.text()).trim())).toBeGreaterThanOrEqual(before + 1);
    await devStart(cluster.info.dir, '', 'zookeeper');
    expect((await cluster.waitConverged(TABLE, ROW_HASH, before + 2, 60_000)).map((f) => f.count)).toEqual([before + 2, before + 2, before + 2]);
    const last = await insert(2, row());
    expect(last.status, last.text).toBe(200);
    await waitFor('every replica to apply past the restarted replica\'s lease', async () => (await Promise.all([0, 1, 2].map(status))).every((s) => s.appliedWatermark >= last.lsn && !s.lease.zookeeperAway));
  });
});
