import { randomBytes } from 'node:crypto';
import { createClient } from '@clickhouse/client';
import { readdirSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { httpsAgent, TestCluster } from '../support/cluster.js';

/**
 * Issue 2's end-to-end slice against real ZooKeeper 3.8 and ClickHouse 18.16 processes:
 * 3 replicas, inserts through every replica, deduplication, ZooKeeper load, bad input,
 * corrupted transfers.
 */

const TABLE = 'default.events';
const ROW_HASH = 'cityHash64(day, id, payload)';
const DDL = (name: string) =>
  `CREATE TABLE ${name} (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;

interface Insert {
  replica: number;
  query: string;
  body: string;
  rows: number;
}

/** Insert number n: 1-3 rows in one of three formats, every 5th spanning two partitions. */
function makeInsert(n: number, replicas: number): Insert {
  const rows = 1 + (n % 3);
  const values = Array.from({ length: rows }, (_, j) => ({
    day: n % 5 === 0 && j === 0 ? '2026-10-15' : '2026-11-01',
    id: n * 10 + j,
    payload: `row ${n}/${j} \u00e9`,
  }));
  const format = n % 3;
  let query: string;
  let body: string;
  if (format === 0) {
    query = `INSERT INTO ${TABLE} VALUES`;
    body = values.map((v) => `('${v.day}', ${v.id}, '${v.payload}')`).join(', ');
  } else if (format === 1) {
    query = `INSERT INTO ${TABLE} FORMAT JSONEachRow`;
    body = values.map((v) => JSON.stringify(v)).join('\n');
  } else {
    query = `INSERT INTO ${TABLE} FORMAT TabSeparated`;
    body = values.map((v) => `${v.day}\t${v.id}\t${v.payload}`).join('\n') + '\n';
  }
  return { replica: n % replicas, query, body, rows };
}

async function runConcurrently<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

describe('one shard, three replicas', () => {
  let cluster: TestCluster;
  const first: Insert[] = Array.from({ length: 300 }, (_, n) => makeInsert(n, 3));
  const expectedRows = first.reduce((s, i) => s + i.rows, 0);

  beforeAll(async () => {
    // A dedup window of 500 block IDs in chunks of 50 (the tests before the znode count insert
    // about 360), so that a test can fill it and see the znode count stop there.
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: { testFaults: true, 'http.maxInsertBytes': 4 * 1024 * 1024, 'zookeeper.dedupWindow': 500, 'zookeeper.dedupChunkEntries': 50 },
    });
    await cluster.onEvery(DDL(TABLE));
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const send = async (ins: Insert, replica = ins.replica, params: Record<string, string> = {}) => {
    const res = await cluster.chorus(replica, { query: ins.query, body: ins.body, params });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`insert via r${replica + 1}: ${res.status} ${text}`);
    return res;
  };

  it('300 concurrent inserts round-robin over 3 replicas converge within 10 s of the last acknowledgement', async () => {
    const started = Date.now();
    await runConcurrently(first, 4, async (ins) => void (await send(ins)));
    const lastAck = Date.now();
    const fingerprints = await cluster.waitConverged(TABLE, ROW_HASH, expectedRows, 10_000);
    const convergedMs = Date.now() - lastAck;
    console.log(
      `300 inserts (${expectedRows} rows) in ${lastAck - started} ms: ${(300_000 / (lastAck - started)).toFixed(1)} inserts/s; ` +
        `all replicas identical ${convergedMs} ms after the last acknowledgement`,
    );
    expect(fingerprints.map((f) => f.count)).toEqual([expectedRows, expectedRows, expectedRows]);
    expect(new Set(fingerprints.map((f) => f.hash)).size).toBe(1);
    expect(convergedMs).toBeLessThanOrEqual(10_000);
  });

  it('every insert sent again byte for byte through another replica is stored once', async () => {
    const lsnBefore = await cluster.nextLsn();
    await runConcurrently(first, 4, async (ins) => {
      const res = await send(ins, (ins.replica + 1) % 3);
      expect(res.headers.get('x-chorus-deduplicated')).toBe('1');
    });
    expect(await cluster.nextLsn()).toBe(lsnBefore);
    const fingerprints = await cluster.fingerprints(TABLE, ROW_HASH);
    expect(fingerprints.map((f) => f.count)).toEqual([expectedRows, expectedRows, expectedRows]);
  });

  it('insert_deduplication_token dedups even when the body differs', async () => {
    const a = makeInsert(1001, 3);
    const b = makeInsert(1004, 3); // same format and partition as `a`, other rows
    expect(b.body).not.toBe(a.body);
    const r1 = await send(a, 0, { insert_deduplication_token: 'batch-42' });
    const r2 = await send(b, 2, { insert_deduplication_token: 'batch-42' });
    expect(r1.headers.get('x-chorus-deduplicated')).toBe('0');
    expect(r2.headers.get('x-chorus-deduplicated')).toBe('1');
    expect(r2.headers.get('x-chorus-lsn')).toBe(r1.headers.get('x-chorus-lsn'));
    const fingerprints = await cluster.waitConverged(TABLE, ROW_HASH, expectedRows + a.rows, 10_000);
    expect(fingerprints.map((f) => f.count)).toEqual(Array(3).fill(expectedRows + a.rows));
    const ids = await cluster.clickhouse(1, `SELECT count() FROM ${TABLE} WHERE id >= 10040 AND id < 10050`);
    expect(Number(ids.trim())).toBe(0);
  });

  it('ZooKeeper holds a fixed handful of Chorus znodes (3 + the window\'s chunks), unchanged by 300 more inserts, at most 1 request per insert', async () => {
    // Fill the window (500 block IDs) first: from then on, sealing a chunk reuses the slot of the
    // chunk it pushes out.
    const fill = Array.from({ length: 200 }, (_, n) => makeInsert(5000 + n, 3));
    await runConcurrently(fill, 4, async (ins) => void (await send(ins)));
    const znodesBefore = await cluster.znodes();
    const more = Array.from({ length: 300 }, (_, n) => makeInsert(2000 + n, 3));
    await sleep(300); // lets the close of the session that counted znodes reach ZooKeeper first
    // One insert first, so that the allocating replica's session is active, not about to send
    // an idle ping, when the window opens. It is part of the rows counted below.
    const warmUp = makeInsert(1999, 3);
    await send(warmUp);
    const packetsBefore = await cluster.zkPacketsReceived();
    await runConcurrently(more, 4, async (ins) => void (await send(ins)));
    const packetsAfter = await cluster.zkPacketsReceived();
    const perInsert = (packetsAfter - packetsBefore) / more.length;
    console.log(`ZooKeeper requests per insert: ${perInsert.toFixed(3)} (${packetsAfter - packetsBefore} packets for ${more.length} inserts, session pings included)`);
    expect(perInsert).toBeLessThanOrEqual(1);
    expect(await cluster.znodes()).toBe(znodesBefore);
    // /chorus, the cluster, the head, and 500 / 50 + 1 chunk slots at most.
    expect(znodesBefore).toBeLessThanOrEqual(3 + 11);
    const total = expectedRows + makeInsert(1001, 3).rows + warmUp.rows + [...fill, ...more].reduce((s, i) => s + i.rows, 0);
    const fingerprints = await cluster.waitConverged(TABLE, ROW_HASH, total, 10_000);
    expect(fingerprints.map((f) => f.count)).toEqual([total, total, total]);
  });

  it('the same rows sent to two tables are two blocks, stored in both', async () => {
    await cluster.onEvery(DDL('default.twin_a'));
    await cluster.onEvery(DDL('default.twin_b'));
    const body = '2026-11-07\t1\tsame\n';
    for (const t of ['default.twin_a', 'default.twin_b']) {
      const res = await cluster.chorus(0, { query: `INSERT INTO ${t} FORMAT TabSeparated`, body });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-chorus-deduplicated')).toBe('0');
    }
    for (const t of ['default.twin_a', 'default.twin_b']) {
      expect((await cluster.waitConverged(t, ROW_HASH, 1, 10_000)).map((f) => f.count)).toEqual([1, 1, 1]);
    }
  });

  it("@clickhouse/client's insert() pointed at Chorus works unchanged", async () => {
    await cluster.onEvery(DDL('default.from_client'));
    const client = createClient({ url: cluster.replica(1).http });
    try {
      const result = await client.insert({
        table: 'default.from_client',
        values: [
          { day: '2026-11-02', id: 1, payload: 'x' },
          { day: '2026-11-03', id: 2, payload: 'y' },
        ],
        format: 'JSONEachRow',
      });
      // The client reads ClickHouse's summary and query id from the answer.
      expect(result.executed).toBe(true);
      expect(result.summary?.written_rows).toBe('2');
      expect(result.query_id).toMatch(/\S/);
      const fingerprints = await cluster.waitConverged('default.from_client', ROW_HASH, 2, 10_000);
      expect(fingerprints.map((f) => f.count)).toEqual([2, 2, 2]);
      // Reads through the same URL are passed to ClickHouse.
      const rs = await client.query({ query: 'SELECT count() AS n FROM default.from_client', format: 'JSONEachRow' });
      // UInt64 comes quoted or not by the release's output_format_json_quote_64bit_integers (off by default in 26).
      const rows = await rs.json<{ n: string | number }>();
      expect(rows.map((r) => Number(r.n))).toEqual([2]);
    } finally {
      await client.close();
    }
  });

  describe('bad input gets a clear error with a stable code and changes nothing', () => {
    const BAD = 'default.bad_input';

    beforeAll(async () => {
      await cluster.onEvery(DDL(BAD));
      await cluster.clickhouse(0, 'CREATE TABLE default.not_merge_tree (id UInt64) ENGINE = Log');
    });

    const expectNothingChanged = async (lsnBefore: number) => {
      expect(await cluster.nextLsn()).toBe(lsnBefore);
      const fingerprints = await cluster.fingerprints(BAD, ROW_HASH);
      expect(fingerprints.map((f) => f.count)).toEqual([0, 0, 0]);
      // Nothing left behind either: the staging tables are emptied (after the answer, so
      // polled) and no part copy waits under pending/ for an LSN.
      await expect
        .poll(async () => Number((await cluster.clickhouse(0, "SELECT count() FROM system.parts WHERE database = '_chorus' AND active")).trim()), { timeout: 10_000 })
        .toBe(0);
      expect(readdirSync(join(cluster.replica(0).dir, 'chorus', 'pending'))).toEqual([]);
    };

    it.each([
      ['an unknown table', 'INSERT INTO default.no_such_table FORMAT TabSeparated', '2026-11-01\t1\tx\n', 404, 'CHORUS_UNKNOWN_TABLE'],
      ['a non-replicated table', 'INSERT INTO default.not_merge_tree FORMAT TabSeparated', '1\n', 400, 'CHORUS_NOT_REPLICATED_TABLE'],
      ['malformed rows', `INSERT INTO ${BAD} FORMAT JSONEachRow`, '{"day":"2026-11-01","id":"not a number","payload":"x"}', 400, 'CHORUS_BAD_DATA'],
      ['a syntax error', `INSERT INTO ${BAD} VALUES`, "('2026-11-01', 1, 'x'", 400, 'CHORUS_BAD_DATA'],
      ['an INSERT without INTO', `INSERT ${BAD} VALUES`, '', 400, 'CHORUS_BAD_QUERY'],
    ])('%s', async (_what, query, body, status, code) => {
      const lsnBefore = await cluster.nextLsn();
      const res = await cluster.chorus(0, { query, body });
      const text = await res.text();
      expect(res.status).toBe(status);
      expect(res.headers.get('x-chorus-error-code')).toBe(code);
      expect(text).toContain(code);
      await expectNothingChanged(lsnBefore);
    });

    it('an oversized request', async () => {
      const lsnBefore = await cluster.nextLsn();
      const row = '2026-11-01\t1\t' + 'x'.repeat(1000) + '\n';
      const res = await cluster.chorus(0, { query: `INSERT INTO ${BAD} FORMAT TabSeparated`, body: row.repeat(5000) });
      expect(res.status).toBe(413);
      expect(res.headers.get('x-chorus-error-code')).toBe('CHORUS_REQUEST_TOO_LARGE');
      await res.text();
      await expectNothingChanged(lsnBefore);
    });

    it('a body cut short before its Content-Length', async () => {
      const lsnBefore = await cluster.nextLsn();
      const errorsBefore = await cluster.metric(0, 'chorus_inserts_total', { outcome: 'error' });
      const url = new URL(cluster.replica(0).http);
      const rows = Array.from({ length: 50 }, (_, i) => `2026-11-01\t${i}\tpartial`).join('\n') + '\n';
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(Number(url.port), url.hostname, () => {
          socket.write(
            `POST /?query=${encodeURIComponent(`INSERT INTO ${BAD} FORMAT TabSeparated`)} HTTP/1.1\r\n` +
              `Host: ${url.host}\r\nContent-Length: ${rows.length * 4}\r\n\r\n` +
              rows,
          );
          // Complete rows only, then the client goes away: the rest never arrives.
          setTimeout(() => socket.destroy(), 300);
        });
        socket.on('close', () => resolve());
        socket.on('error', reject);
      });
      await expect.poll(() => cluster.metric(0, 'chorus_inserts_total', { outcome: 'error' }), { timeout: 10_000 }).toBe(errorsBefore + 1);
      await expectNothingChanged(lsnBefore);
    });

    it('a part name with / or .. at the interserver port gets 400', async () => {
      const get = (path: string) =>
        new Promise<number>((resolve, reject) => {
          const req = https.get({ host: '127.0.0.1', port: Number(new URL(cluster.replica(0).interserver).port), path, agent: httpsAgent(cluster.info, cluster.replica(1).tls) }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', reject);
        });
      expect(await get('/v1/parts/1/..%2F..%2Fetc/passwd')).toBe(400);
      expect(await get('/v1/parts/1/202611_1_1_0%2F..%2Fx/checksums.txt')).toBe(400);
      expect(await get('/v1/parts/1/../checksums.txt')).toBe(400);
      expect(await get('/v1/parts/1/202611_1_1_0/..')).toBe(400);
      expect(await get('/v1/parts/1/202611_1_1_0/..%2F..%2Fcluster.json')).toBe(400);
    });
  });

  it('a small part travels inside the push and is not fetched; one above replication.pushPartBytes is fetched', async () => {
    const CARRIED = 'default.carried';
    await cluster.onEvery(DDL(CARRIED));
    const followers = async (name: string, labels: Record<string, string>) => (await Promise.all([1, 2].map((i) => cluster.metric(i, name, labels)))).reduce((a, b) => a + b);
    const pushed = () => followers('chorus_pushed_parts_total', { outcome: 'stored' });
    const fetched = () => followers('chorus_insert_step_seconds_count', { step: 'fetch', role: 'follower' });
    const rowsOf = (n: number, from: number, payload: (i: number) => string) => Array.from({ length: n }, (_, i) => `2026-11-05\t${from + i}\t${payload(i)}`).join('\n') + '\n';

    const [pushedBefore, fetchedBefore] = [await pushed(), await fetched()];
    for (let k = 0; k < 3; k++) {
      const res = await cluster.chorus(0, { query: `INSERT INTO ${CARRIED} FORMAT TabSeparated`, body: rowsOf(100, k * 100, (i) => `small ${i}`) });
      expect(res.status).toBe(200);
    }
    await cluster.waitConverged(CARRIED, ROW_HASH, 300, 30_000);
    // Six copies (3 parts, 2 followers). A push races the digest exchange, which may bring an
    // entry first and without its part: that copy is fetched. Most go inside the push.
    const smallPushed = (await pushed()) - pushedBefore;
    expect(smallPushed).toBeGreaterThanOrEqual(4);
    expect(smallPushed + (await fetched()) - fetchedBefore).toBe(6);

    // Random hex does not compress: about 1 MB of part, above the 256 KiB default.
    const big = rowsOf(8000, 1000, () => randomBytes(64).toString('hex'));
    const [pushedMid, fetchedMid] = [await pushed(), await fetched()];
    const res = await cluster.chorus(0, { query: `INSERT INTO ${CARRIED} FORMAT TabSeparated`, body: big });
    expect(res.status).toBe(200);
    const fingerprints = await cluster.waitConverged(CARRIED, ROW_HASH, 8300, 30_000);
    expect(new Set(fingerprints.map((f) => f.hash)).size).toBe(1);
    expect((await pushed()) - pushedMid).toBe(0);
    expect((await fetched()) - fetchedMid).toBe(2);
  });

  it('a part corrupted in transit is refused, fetched again, and the table stays readable everywhere', async () => {
    const CORRUPT = 'default.corrupt';
    await cluster.onEvery(DDL(CORRUPT));
    const refusedBefore = (await Promise.all([1, 2].map((i) => cluster.metric(i, 'chorus_fetch_failures_total', { reason: 'verification' })))).reduce((a, b) => a + b);
    await cluster.armFaults(0, { corruptServedFiles: 1 });
    const rows = Array.from({ length: 1000 }, (_, i) => `2026-11-05\t${i}\tpayload ${i}`).join('\n') + '\n';
    const res = await cluster.chorus(0, { query: `INSERT INTO ${CORRUPT} FORMAT TabSeparated`, body: rows });
    expect(res.status).toBe(200);
    const fingerprints = await cluster.waitConverged(CORRUPT, ROW_HASH, 1000, 30_000);
    expect(fingerprints.map((f) => f.count)).toEqual([1000, 1000, 1000]);
    expect(new Set(fingerprints.map((f) => f.hash)).size).toBe(1);
    const refused = (await Promise.all([1, 2].map((i) => cluster.metric(i, 'chorus_fetch_failures_total', { reason: 'verification' })))).reduce((a, b) => a + b);
    expect(refused - refusedBefore).toBe(1);
    // A part this small goes inside the push: that copy was the corrupted one, and was fetched again.
    const refusedPushed = (await Promise.all([1, 2].map((i) => cluster.metric(i, 'chorus_pushed_parts_total', { outcome: 'refused' })))).reduce((a, b) => a + b);
    expect(refusedPushed).toBe(1);
    for (let i = 0; i < 3; i++) {
      // Every column read back: a corrupt part would make this throw.
      const text = await cluster.clickhouse(i, `SELECT sum(length(payload)), max(id) FROM ${CORRUPT}`);
      expect(text.trim().split('\t')[1]).toBe('999');
    }
  });
});
