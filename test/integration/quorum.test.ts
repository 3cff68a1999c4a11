import { createClient } from '@clickhouse/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devKill, devStart } from '../../src/dev/cluster.js';
import { TestCluster } from '../support/cluster.js';

/**
 * Issue 13's insert_quorum against real ZooKeeper and ClickHouse processes: an insert with
 * insert_quorum=N is answered only once N replicas have attached it; with a member away it times
 * out with QUORUM_TIMEOUT and still reaches every replica; a read with X-Chorus-Wait-LSN waits
 * until the replica has applied that LSN.
 */

const TABLE = 'default.quorum';
const DDL = `CREATE TABLE ${TABLE} (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;

describe('insert_quorum and reads after an LSN', () => {
  let cluster: TestCluster;
  let id = 0;
  const body = () => `2026-11-01\t${++id}\n`;

  const countOn = async (i: number, where = '1'): Promise<number> => Number((await cluster.clickhouse(i, `SELECT count() FROM ${TABLE} WHERE ${where}`)).trim());

  beforeAll(async () => {
    cluster = await TestCluster.start({ replicas: 3 });
    await cluster.onEvery(DDL);
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('answers insert_quorum=3 only once the row is readable on all three replicas', async () => {
    for (let n = 0; n < 5; n++) {
      const rowBody = body();
      const rowId = id;
      const res = await cluster.chorus(n % 3, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: rowBody, params: { insert_quorum: '3', insert_quorum_timeout: '30000' } });
      expect(res.status, await res.clone().text()).toBe(200);
      expect(res.headers.get('x-chorus-quorum')?.split(',').sort()).toEqual(cluster.replicas.map((r) => r.name).sort());
      // Read at once after the answer, straight from each ClickHouse: no waiting allowed.
      const counts = await Promise.all([0, 1, 2].map((i) => countOn(i, `id = ${rowId}`)));
      expect(counts).toEqual([1, 1, 1]);
    }
  });

  it('holds the answer while a follower is paused, and gives it once that follower has the row', async () => {
    // Without the wait, the answer would come in milliseconds with the row missing on replica 3.
    await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'STOP');
    const resumeAfterMs = 1500;
    let resumedAt = 0;
    const resume = setTimeout(() => {
      resumedAt = Date.now();
      void devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'CONT');
    }, resumeAfterMs);
    try {
      const res = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: body(), params: { insert_quorum: '3', insert_quorum_timeout: '30000' } });
      const answeredAt = Date.now();
      expect(res.status, await res.clone().text()).toBe(200);
      expect(resumedAt).toBeGreaterThan(0);
      expect(answeredAt).toBeGreaterThanOrEqual(resumedAt);
      expect(await countOn(2, `id = ${id}`)).toBe(1);
    } finally {
      clearTimeout(resume);
      await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'CONT');
    }
  });

  it("takes insert_quorum from @clickhouse/client's clickhouse_settings, and reads through it with X-Chorus-Wait-LSN", async () => {
    await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'STOP');
    const resume = setTimeout(() => void devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'CONT'), 1000);
    const client = createClient({ url: cluster.replica(0).http });
    try {
      const started = Date.now();
      const rowId = ++id;
      const result = await client.insert({
        table: TABLE,
        values: [{ day: '2026-11-01', id: rowId }],
        format: 'JSONEachRow',
        clickhouse_settings: { insert_quorum: '3', insert_quorum_timeout: 30000 },
      });
      expect(result.executed).toBe(true);
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
      expect(await countOn(2, `id = ${rowId}`)).toBe(1);
      const lsn = Number(result.response_headers['x-chorus-lsn']);
      expect(lsn).toBeGreaterThan(0);
      const reader = createClient({ url: cluster.replica(1).http, http_headers: { 'X-Chorus-Wait-LSN': String(lsn) } });
      try {
        const rows = await (await reader.query({ query: `SELECT count() AS n FROM ${TABLE} WHERE id = ${rowId}`, format: 'JSONEachRow' })).json<{ n: string | number }>();
        expect(rows.map((r) => Number(r.n))).toEqual([1]);
      } finally {
        await reader.close();
      }
    } finally {
      clearTimeout(resume);
      await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'CONT');
      await client.close();
    }
  });

  it('refuses bad quorum settings, and a quorum the shard cannot have, before storing anything', async () => {
    const before = await countOn(0);
    const cases: Array<[Record<string, string>, string]> = [
      [{ insert_quorum: 'two' }, 'CHORUS_BAD_SETTING'],
      [{ insert_quorum: '2', insert_quorum_timeout: '-5' }, 'CHORUS_BAD_SETTING'],
      [{ insert_quorum: '2', insert_quorum_parallel: 'maybe' }, 'CHORUS_BAD_SETTING'],
      [{ insert_quorum: '4' }, 'CHORUS_TOO_FEW_REPLICAS'],
    ];
    for (const [params, code] of cases) {
      const res = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: body(), params });
      expect(res.status).toBe(400);
      expect(res.headers.get('x-chorus-error-code')).toBe(code);
    }
    const inText = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} SETTINGS insert_quorum=2 FORMAT TabSeparated`, body: body() });
    expect(inText.status).toBe(400);
    expect(inText.headers.get('x-chorus-error-code')).toBe('CHORUS_UNSUPPORTED_SETTING');
    await new Promise((r) => setTimeout(r, 500));
    expect(await countOn(0)).toBe(before);
    expect(await countOn(1)).toBe(before);
  });

  it('times out with QUORUM_TIMEOUT while a sidecar is stopped, keeps the row, and a retry is deduplicated and met once it is back', async () => {
    await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'KILL');
    try {
      const rowBody = body();
      const rowId = id;
      const started = Date.now();
      const res = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: rowBody, params: { insert_quorum: '3', insert_quorum_timeout: '1500' } });
      const waited = Date.now() - started;
      expect(res.status).toBe(504);
      expect(res.headers.get('x-chorus-error-code')).toBe('CHORUS_QUORUM_TIMEOUT');
      expect(res.headers.get('x-chorus-retryable')).toBe('1');
      const lsn = Number(res.headers.get('x-chorus-lsn'));
      expect(lsn).toBeGreaterThan(0);
      expect(waited).toBeGreaterThanOrEqual(1400);
      expect(await res.text()).toMatch(/attached on 2 of the 3 replicas/);
      // Stored and replicated where it can be, as ClickHouse's quorum insert leaves it.
      expect(await countOn(0, `id = ${rowId}`)).toBe(1);
      await expect.poll(() => countOn(1, `id = ${rowId}`), { timeout: 20_000 }).toBe(1);
      // A quorum of 2 is met without the stopped replica.
      const two = await cluster.chorus(1, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: body(), params: { insert_quorum: '2', insert_quorum_timeout: '20000' } });
      expect(two.status, await two.clone().text()).toBe(200);
      expect(two.headers.get('x-chorus-quorum')?.split(',')).toHaveLength(2);

      // The client retries the timed-out insert once the replica is back: deduplicated, and answered when all three hold it.
      await devStart(cluster.info.dir, cluster.replica(2).name, 'sidecar');
      const retry = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: rowBody, params: { insert_quorum: '3', insert_quorum_timeout: '60000' } });
      expect(retry.status, await retry.clone().text()).toBe(200);
      expect(retry.headers.get('x-chorus-deduplicated')).toBe('1');
      expect(retry.headers.get('x-chorus-lsn')).toBe(String(lsn));
      expect(await Promise.all([0, 1, 2].map((i) => countOn(i, `id = ${rowId}`)))).toEqual([1, 1, 1]);
    } finally {
      await devStart(cluster.info.dir, cluster.replica(2).name, 'sidecar').catch(() => undefined);
    }
  });

  it('holds a read with X-Chorus-Wait-LSN until this replica has applied that LSN', async () => {
    // Replica 3's sidecar is paused: it applies nothing until it is resumed.
    await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'STOP');
    let lsn: number;
    let rowId: number;
    try {
      const res = await cluster.chorus(0, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: body() });
      expect(res.status).toBe(200);
      lsn = Number(res.headers.get('x-chorus-lsn'));
      rowId = id;
    } finally {
      await devKill(cluster.info.dir, cluster.replica(2).name, 'sidecar', 'CONT');
    }
    const read = (headers: Record<string, string>) =>
      fetch(`${cluster.replica(2).http}/?query=${encodeURIComponent(`SELECT count() FROM ${TABLE} WHERE id = ${rowId}`)}`, { headers });
    // Asked at once after the resume: the answer already counts the row.
    const waited = await read({ 'X-Chorus-Wait-LSN': String(lsn), 'X-Chorus-Wait-Timeout-Ms': '20000' });
    expect(waited.status).toBe(200);
    expect((await waited.text()).trim()).toBe('1');
    // An LSN that does not exist yet: the wait ends with its own code, and nothing ran.
    const never = await read({ 'X-Chorus-Wait-LSN': String(lsn + 1_000_000), 'X-Chorus-Wait-Timeout-Ms': '300' });
    expect(never.status).toBe(504);
    expect(never.headers.get('x-chorus-error-code')).toBe('CHORUS_LSN_WAIT_TIMEOUT');
    const bad = await read({ 'X-Chorus-Wait-LSN': 'soon' });
    expect(bad.status).toBe(400);
    expect(bad.headers.get('x-chorus-error-code')).toBe('CHORUS_BAD_SETTING');
  });
});
