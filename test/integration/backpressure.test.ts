import { runCli } from '../support/built-cli.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliEnv, TestCluster } from '../support/cluster.js';

/**
 * Issue 13's backpressure against real ZooKeeper and ClickHouse processes: past the parts
 * threshold, the apply-lag threshold or the concurrency bound, inserts get 503 with Retry-After
 * and store nothing; once the cause clears they succeed again on their own.
 */

const TABLE = 'default.pressed';
/** Its own table: the parts threshold counts every table, and this one is left with many parts. */
const CROWDED = 'default.crowded';
const DDL = (name: string) => `CREATE TABLE ${name} (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;
const cli = runCli;

describe('backpressure', () => {
  let cluster: TestCluster;
  let id = 0;
  const insert = (replica: number, init: { body?: RequestInit['body']; table?: string } = {}) =>
    fetch(`${cluster.replica(replica).http}/?query=${encodeURIComponent(`INSERT INTO ${init.table ?? TABLE} FORMAT TabSeparated`)}`, {
      method: 'POST',
      body: init.body ?? `2026-11-01\t${++id}\n`,
      ...(init.body instanceof ReadableStream ? { duplex: 'half' } : {}),
    } as RequestInit);
  const count = async (i: number, table = TABLE) => Number((await cluster.clickhouse(i, `SELECT count() FROM ${table}`)).trim());
  const backpressureOf = async (i: number) => ((await (await fetch(`${cluster.replica(i).http}/readyz`)).json()) as { backpressure: string[] }).backpressure;
  const admin = (command: string, replica: number) =>
    cli([command, '--grpc', cluster.replica(replica).grpc], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: {
        'backpressure.maxActivePartsPerPartition': 6,
        'backpressure.maxApplyLagSeconds': 1,
        'backpressure.maxConcurrentInsertsPerTable': 1,
        'backpressure.checkIntervalMs': 100,
      },
    });
    await cluster.onEvery(DDL(TABLE));
    await cluster.onEvery(DDL(CROWDED));
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('refuses inserts into a table with too many active parts, and takes them again once merges catch up', async () => {
    const crowded = { table: CROWDED };
    await cluster.onEvery(`SYSTEM STOP MERGES ${CROWDED}`);
    for (let n = 0; n < 7; n++) expect((await insert(n % 3, crowded)).status).toBe(200);
    await expect.poll(() => count(0, CROWDED), { timeout: 10_000 }).toBe(7);
    await expect.poll(async () => (await backpressureOf(0)).join('\n'), { timeout: 5000, interval: 100 }).toMatch(/default\.crowded: 7 active parts/);
    const refused = await insert(0, crowded);
    expect(refused.status).toBe(503);
    expect(refused.headers.get('x-chorus-error-code')).toBe('CHORUS_TOO_MANY_PARTS');
    expect(refused.headers.get('retry-after')).toBe('5');
    // Another table is not held back.
    expect((await insert(0)).status).toBe(200);
    const status = await admin('status', 0);
    expect(status.stdout).toMatch(/BACKPRESSURE[\s\S]*default\.crowded: 7 active parts/);
    expect(await cluster.metric(0, 'chorus_inserts_refused_total', { reason: 'parts' })).toBe(1);
    // The refused insert stored nothing anywhere.
    for (const i of [0, 1, 2]) expect(await count(i, CROWDED)).toBe(7);

    await cluster.onEvery(`SYSTEM START MERGES ${CROWDED}`);
    await cluster.onEvery(`OPTIMIZE TABLE ${CROWDED} FINAL`);
    await expect.poll(() => backpressureOf(0), { timeout: 10_000, interval: 100 }).toEqual([]);
    expect((await insert(0, crowded)).status).toBe(200);
  });

  it('refuses inserts on a replica that lags behind, and takes them again once it has caught up', async () => {
    expect((await admin('pause', 1)).code).toBe(0);
    try {
      expect((await insert(0)).status).toBe(200);
      await expect.poll(async () => (await backpressureOf(1)).join('\n'), { timeout: 10_000, interval: 100 }).toMatch(/apply lag/);
      const refused = await insert(1);
      expect(refused.headers.get('x-chorus-error-code')).toBe('CHORUS_REPLICA_LAGGING');
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('5');
      // The other replicas are not behind: they take inserts.
      expect((await insert(2)).status).toBe(200);
    } finally {
      expect((await admin('resume', 1)).code).toBe(0);
    }
    await expect.poll(() => backpressureOf(1), { timeout: 10_000, interval: 100 }).toEqual([]);
    expect((await insert(1)).status).toBe(200);
  });

  it('bounds the inserts into one table that run at once', async () => {
    // An insert whose body is still arriving holds its place.
    let finish!: () => void;
    const held = new Promise<void>((resolve) => (finish = resolve));
    const slow = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode(`2026-11-01\t${++id}\n`));
        await held;
        controller.close();
      },
    });
    const first = insert(2, { body: slow });
    try {
      await expect.poll(async () => (await insert(2)).headers.get('x-chorus-error-code'), { timeout: 5000, interval: 100 }).toBe('CHORUS_TOO_MANY_INSERTS');
      const refused = await insert(2);
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('1');
    } finally {
      finish();
    }
    expect((await first).status).toBe(200);
    expect((await insert(2)).status).toBe(200);
  });
});
