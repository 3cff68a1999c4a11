import { existsSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { devKill, devStart, readCluster } from '../../src/dev/cluster.js';
import { isAlive } from '../../src/dev/processes.js';
import { DEV_USERS } from '../../src/dev/clickhouse.js';
import { TestCluster, testBackend } from '../support/cluster.js';

/**
 * Issue 9, clients: a client acts as its own ClickHouse user (its credentials, its rights, asked
 * of ClickHouse), statements that would change one replica only are refused, settings cannot
 * turn a staging insert asynchronous, and an insert gets an answer while ZooKeeper is down.
 */
describe('clients', () => {
  let cluster: TestCluster;
  const TABLE = 'default.client_rows';
  const ROWS = (first: number, n: number) => Array.from({ length: n }, (_, i) => `2026-11-01\t${first + i}\n`).join('');

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: {
        'staging.idleDropMs': 3000,
        'http.requestTimeoutMs': 3000,
        // ZooKeeper is down for up to ~30 s below; a session that outlives it reconnects (see
        // the report of issue 9: one that expires meanwhile may never reconnect).
        'zookeeper.sessionTimeoutMs': 60_000,
      },
    });
    await cluster.onEvery(`CREATE TABLE ${TABLE} (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`);
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  type Auth = { headers?: Record<string, string>; params?: Record<string, string> };
  const basic = (user: string, password: string): Auth => ({ headers: { Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` } });
  const keyed = (user: string, password: string): Auth => ({ headers: { 'X-ClickHouse-User': user, 'X-ClickHouse-Key': password } });
  const inUrl = (user: string, password: string): Auth => ({ params: { user, password } });

  const send = (replica: number, query: string, body: string, auth: Auth = {}, params: Record<string, string> = {}) => {
    const url = new URL(cluster.replica(replica).http + '/');
    url.searchParams.set('query', query);
    for (const [k, v] of Object.entries({ ...auth.params, ...params })) url.searchParams.set(k, v);
    return fetch(url, { method: 'POST', body, headers: auth.headers });
  };

  const counts = async (where = '1') =>
    Promise.all(cluster.replicas.map(async (_, i) => Number((await cluster.clickhouse(i, `SELECT count() FROM ${TABLE} WHERE ${where}`)).trim())));

  /** Nothing of a refused request anywhere: no LSN, no rows, no staged part, nothing pending. */
  const expectNothingWritten = async (lsnBefore: number, rowsBefore: number[]) => {
    expect(await cluster.nextLsn()).toBe(lsnBefore);
    expect(await counts()).toEqual(rowsBefore);
    for (let i = 0; i < cluster.replicas.length; i++) {
      // A cut insert's staging table is retired after the reply (KILL, DROP): polled, not read once.
      await expect
        .poll(async () => Number((await cluster.clickhouse(i, "SELECT count() FROM system.parts WHERE database = '_chorus' AND active")).trim()), { timeout: 10_000, interval: 100 })
        .toBe(0);
      const pending = join(cluster.replica(i).dir, 'chorus', 'pending');
      expect(existsSync(pending) ? readdirSync(pending) : []).toEqual([]);
    }
  };

  describe.runIf(testBackend() === 'server')('their own credentials and grants (ClickHouse 18.16 users.xml)', () => {
    it('a user that may not insert is refused with ClickHouse’s own error, and nothing is written', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      const readonly = await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(1, 3), keyed('reader', DEV_USERS.reader));
      const text = await readonly.text();
      expect(readonly.status).toBe(500); // what 18.16 itself answers a readonly user
      expect(readonly.headers.get('x-chorus-error-code')).toBe('CHORUS_CLICKHOUSE_REFUSED');
      expect(text).toMatch(/^Code: 164\b.*readonly mode/);
      const stranger = await send(1, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(1, 3), basic('stranger', DEV_USERS.stranger));
      expect(stranger.status).toBe(500);
      expect(await stranger.text()).toMatch(/^Code: 291\b.*Access denied to database default for user stranger/);
      const wrong = await send(2, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(1, 3), inUrl('writer', 'not-the-password'));
      expect(wrong.status).toBe(401);
      expect(await wrong.text()).toMatch(/^Code: 193\b.*Wrong password for user writer/);
      await expectNothingWritten(lsn, rows);
    });

    it('the right user, in any of the three ways ClickHouse reads credentials, inserts', async () => {
      const ways = [keyed('writer', DEV_USERS.writer), basic('writer', DEV_USERS.writer), inUrl('writer', DEV_USERS.writer)];
      for (const [i, auth] of ways.entries()) {
        const res = await send(i, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(100 + i * 10, 2), auth);
        expect(res.status, await res.text()).toBe(200);
      }
      await expect.poll(() => counts('id >= 100 AND id < 130'), { timeout: 20_000, interval: 200 }).toEqual([6, 6, 6]);
    });

    it('a user that may not drop or truncate is refused with ClickHouse’s error, and nothing is dropped', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      expect(rows[0]).toBeGreaterThan(0);
      const drop = await send(0, `ALTER TABLE ${TABLE} DROP PARTITION 202611`, '', keyed('reader', DEV_USERS.reader));
      expect(drop.status).toBe(500);
      expect(drop.headers.get('x-chorus-error-code')).toBe('CHORUS_CLICKHOUSE_REFUSED');
      expect(await drop.text()).toMatch(/^Code: 164\b/);
      const truncate = await send(1, `TRUNCATE TABLE ${TABLE}`, '', basic('stranger', DEV_USERS.stranger));
      expect(truncate.status).toBe(500);
      expect(await truncate.text()).toMatch(/^Code: 291\b/);
      await expectNothingWritten(lsn, rows);
    });

    it('pass-through queries run as the client, with credentials in headers or only in the URL', async () => {
      const whoami = "SELECT user FROM system.processes WHERE query LIKE '%chorus-whoami%'";
      const cases: Array<[Auth, string]> = [
        [keyed('reader', DEV_USERS.reader), 'reader'],
        [inUrl('reader', DEV_USERS.reader), 'reader'],
        [basic('stranger', DEV_USERS.stranger), 'stranger'],
        [{}, 'default'],
      ];
      for (const [auth, user] of cases) {
        const res = await send(0, whoami, '', auth);
        expect(res.status).toBe(200);
        expect((await res.text()).trim()).toBe(user);
      }
      // A read the client's user may not do is refused by ClickHouse, not done as Chorus's user.
      const denied = await send(0, `SELECT count() FROM ${TABLE}`, '', basic('stranger', DEV_USERS.stranger));
      expect(denied.status).toBe(500);
      expect(await denied.text()).toMatch(/Access denied to database default/);
    });
  });

  describe.runIf(testBackend() === 'chdb')('the chdb front has one user', () => {
    it('refuses any other user with ClickHouse’s AUTHENTICATION_FAILED, and nothing is written', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      const res = await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(1, 3), keyed('writer', DEV_USERS.writer));
      expect(res.headers.get('x-chorus-error-code')).toBe('CHORUS_CLICKHOUSE_REFUSED');
      expect(res.headers.get('x-clickhouse-exception-code')).toBe('516');
      expect(await res.text()).toMatch(/AUTHENTICATION_FAILED/);
      await expectNothingWritten(lsn, rows);
    });
  });

  describe('statements that would change one replica only', () => {
    beforeAll(async () => {
      await cluster.onEvery('CREATE DATABASE IF NOT EXISTS elsewhere');
      await cluster.onEvery('CREATE TABLE IF NOT EXISTS elsewhere.local (id UInt64) ENGINE = MergeTree ORDER BY id');
    });

    it('are refused with NOT_REPLICATED_STATEMENT on a replicated table, whatever comments hide', async () => {
      const seed = await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(500, 2));
      expect(seed.status).toBe(200);
      await expect.poll(() => counts('id >= 500 AND id < 502'), { timeout: 20_000, interval: 200 }).toEqual([2, 2, 2]);
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      // Mutations and schema changes alone are replicated (mutations.test.ts, schema.test.ts); mixed with
      // other commands, or of kinds Chorus does not replicate, they are refused.
      for (const sql of [
        `/* ' */ alter /* ' */ table ${TABLE} update id = id + 1000 where 1, /* ' */ drop column payload`,
        `ALTER TABLE ${TABLE} DROP PARTITION 202611 /* ' */, DELETE WHERE 1 /* ' */`,
        `ALTER TABLE ${TABLE} MODIFY ORDER BY id`,
        `TRUNCATE TABLE ${TABLE} SYNC`,
        `OPTIMIZE TABLE ${TABLE} FINAL`,
        `EXCHANGE TABLES ${TABLE} AND default.renamed`,
        `DETACH TABLE ${TABLE}`,
        `UPDATE ${TABLE} SET id = 0 WHERE 1`,
      ]) {
        const res = await send(0, sql, '');
        const code = res.headers.get('x-chorus-error-code');
        expect([code, res.status], `${sql}: ${await res.text()}`).toEqual(
          sql.includes('DROP PARTITION') ? ['CHORUS_BAD_QUERY', 400] : ['CHORUS_NOT_REPLICATED_STATEMENT', 400],
        );
      }
      // Split between the query parameter and the body, which ClickHouse runs as one statement.
      const split = await send(0, 'OPTIMIZE', `TABLE ${TABLE} FINAL`);
      expect(split.headers.get('x-chorus-error-code'), await split.text()).toBe('CHORUS_NOT_REPLICATED_STATEMENT');
      // The same in the body, as clients that POST the statement send it.
      const body = await fetch(cluster.replica(1).http + '/', { method: 'POST', body: `ALTER TABLE ${TABLE} UPDATE id = 0 WHERE 1, MODIFY ORDER BY id` });
      expect(body.headers.get('x-chorus-error-code')).toBe('CHORUS_NOT_REPLICATED_STATEMENT');
      await expectNothingWritten(lsn, rows);
      expect(Number((await cluster.clickhouse(0, `SELECT count() FROM system.tables WHERE database = 'default' AND name = 'client_rows'`)).trim())).toBe(1);
    });

    it('pass through on a table Chorus does not replicate', async () => {
      await cluster.clickhouse(0, 'INSERT INTO elsewhere.local VALUES (1), (2)');
      const res = await send(0, 'DROP TABLE elsewhere.local', '');
      expect(res.status, await res.text()).toBe(200);
      expect((await cluster.clickhouse(0, "SELECT count() FROM system.tables WHERE database = 'elsewhere'")).trim()).toBe('0');
    });
  });

  describe('INSERT ... SELECT, whose SELECT runs inside the staging insert with Chorus\'s own user', () => {
    it('is checked as the client first (EXPLAIN, 20.6+) or refused where the release cannot check it; a SELECT hidden in the body is refused', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      // The body would be read by ClickHouse as the rest of the statement: Chorus refuses it.
      const hidden = await send(0, `INSERT INTO ${TABLE}`, 'SELECT toDate(\'2026-11-01\'), number FROM system.numbers LIMIT 3');
      expect([hidden.status, hidden.headers.get('x-chorus-error-code')], await hidden.text()).toEqual([400, 'CHORUS_BAD_QUERY']);
      const res = await send(0, `INSERT INTO ${TABLE} /* a comment */ SELECT toDate('2026-11-01'), 800 + number FROM system.numbers LIMIT 3`, '');
      const text = await res.text();
      if (testBackend() === 'server') {
        // ClickHouse 18.16 has no EXPLAIN: the SELECT cannot be checked against the client's rights.
        expect([res.status, res.headers.get('x-chorus-error-code')], text).toEqual([400, 'CHORUS_NOT_REPLICATED_STATEMENT']);
        await expectNothingWritten(lsn, rows);
      } else {
        expect(res.status, text).toBe(200);
        await expect.poll(() => counts('id >= 800 AND id < 803'), { timeout: 20_000, interval: 200 }).toEqual([3, 3, 3]);
      }
    });
  });

  describe('settings that reach staging', () => {
    it('async_insert from the URL is overridden: the rows are stored on every replica when the 200 comes', async () => {
      const res = await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(700, 4), {}, { async_insert: '1', wait_for_async_insert: '0' });
      expect(res.status, await res.text()).toBe(200);
      expect(res.headers.get('x-chorus-blocks')).toBe('1');
      expect(Number((await cluster.clickhouse(0, `SELECT count() FROM ${TABLE} WHERE id >= 700 AND id < 704`)).trim())).toBe(4);
      await expect.poll(() => counts('id >= 700 AND id < 704'), { timeout: 20_000, interval: 200 }).toEqual([4, 4, 4]);
    });

    it('async_insert or deduplication set inside the statement is refused with UNSUPPORTED_SETTING', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      const inQuery = await send(0, `INSERT INTO ${TABLE} SETTINGS async_insert = 1, wait_for_async_insert = 0 FORMAT TabSeparated`, ROWS(800, 2));
      expect(inQuery.headers.get('x-chorus-error-code')).toBe('CHORUS_UNSUPPORTED_SETTING');
      const inBody = await fetch(cluster.replica(1).http + '/', { method: 'POST', body: `INSERT INTO ${TABLE} SETTINGS insert_deduplicate = 1 FORMAT TabSeparated\n${ROWS(800, 2)}` });
      expect(inBody.status).toBe(400);
      expect(inBody.headers.get('x-chorus-error-code')).toBe('CHORUS_UNSUPPORTED_SETTING');
      await expectNothingWritten(lsn, rows);
    });
  });

  describe('bounded by what is in use', () => {
    it('a body slower than http.requestTimeoutMs is cut with REQUEST_TIMEOUT, nothing is written, and its staging table is free again', async () => {
      const lsn = await cluster.nextLsn();
      const rows = await counts();
      const url = new URL(cluster.replica(0).http);
      const started = Date.now();
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(Number(url.port), url.hostname, () => {
          const query = encodeURIComponent(`INSERT INTO ${TABLE} FORMAT TabSeparated`);
          socket.write(`POST /?query=${query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n2026-11-01\t77`);
          // ... and nothing more: the rest of the announced 1000 bytes never comes.
        });
        let text = '';
        socket.on('data', (d: Buffer) => (text += d.toString()));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
      expect(Date.now() - started).toBeLessThan(3000 + 5000);
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toMatch(/X-Chorus-Error-Code: CHORUS_REQUEST_TIMEOUT/i);
      await expectNothingWritten(lsn, rows);
      // The slot held by that insert is back: inserts go on.
      expect((await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(650, 1))).status).toBe(200);
    });

    it('the metric label of a table Chorus does not replicate is fixed, never the client’s text', async () => {
      const name = `default.no_such_${Date.now()}`;
      const before = await cluster.metric(0, 'chorus_inserts_total', { table: '(not replicated)', outcome: 'error' });
      const res = await send(0, `INSERT INTO ${name} FORMAT TabSeparated`, ROWS(1, 1));
      expect(res.headers.get('x-chorus-error-code')).toBe('CHORUS_UNKNOWN_TABLE');
      expect(await cluster.metric(0, 'chorus_inserts_total', { table: '(not replicated)', outcome: 'error' })).toBe(before + 1);
      expect(await (await fetch(`${cluster.replica(0).http}/metrics`)).text()).not.toContain('no_such_');
    });

    it('staging tables of a table unused for staging.idleDropMs are dropped, and made again on its next insert', async () => {
      const stagingTables = async () => Number((await cluster.clickhouse(0, "SELECT count() FROM system.tables WHERE database = '_chorus' AND startsWith(name, 's_')")).trim());
      expect((await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(600, 1))).status).toBe(200);
      await expect.poll(stagingTables, { timeout: 15_000, interval: 200 }).toBe(0);
      expect((await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(601, 1))).status).toBe(200);
      await expect.poll(() => counts('id IN (600, 601)'), { timeout: 20_000, interval: 200 }).toEqual([2, 2, 2]);
    });
  });

  describe('ZooKeeper down', () => {
    it('inserts through any replica answer 503 ALLOCATOR_UNAVAILABLE with Retry-After in bounded time; retried once it is back, each row is stored once', async () => {
      await devKill(cluster.info.dir, 'r1', 'zookeeper');
      try {
        const attempts = [0, 1].map(async (replica) => {
          const started = Date.now();
          const res = await send(replica, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(900 + replica * 10, 3));
          return { status: res.status, code: res.headers.get('x-chorus-error-code'), retryAfter: res.headers.get('retry-after'), ms: Date.now() - started, text: await res.text() };
        });
        for (const a of await Promise.all(attempts)) {
          expect(a, a.text).toMatchObject({ status: 503, code: 'CHORUS_ALLOCATOR_UNAVAILABLE' });
          expect(Number(a.retryAfter)).toBeGreaterThan(0);
          // gossip.allocateTimeoutMs (5 s) per member tried, plus zookeeper.unknownOutcomeRetryMs (10 s) when a write's outcome is unknown.
          expect(a.ms).toBeLessThan(40_000);
        }
      } finally {
        await devStart(cluster.info.dir, 'r1', 'zookeeper');
      }
      for (const replica of [0, 1]) {
        await expect
          .poll(
            async () => {
              const res = await send(replica, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(900 + replica * 10, 3));
              return `${res.status} ${res.headers.get('x-chorus-error-code') ?? ''} ${(await res.text()).slice(0, 300)}`;
            },
            { timeout: 60_000, interval: 500 },
          )
          .toMatch(/^200 /);
      }
      await expect.poll(() => counts('id >= 900 AND id < 920'), { timeout: 20_000, interval: 200 }).toEqual([6, 6, 6]);
      for (let i = 0; i < 3; i++) {
        expect((await cluster.clickhouse(i, `SELECT count() = uniqExact(id) FROM ${TABLE} WHERE id >= 900 AND id < 920`)).trim()).toBe('1');
      }
    }, 180_000);

    it('a sidecar that starts while ZooKeeper is down waits for it (startupWaitMs) and is ready once it is back', async () => {
      await devKill(cluster.info.dir, 'r1', 'zookeeper');
      let started: Promise<void> = Promise.resolve();
      try {
        await devKill(cluster.info.dir, 'r2', 'sidecar', 'TERM');
        // Rejects if the sidecar exits before it is ready.
        started = devStart(cluster.info.dir, 'r2', 'sidecar');
        started.catch(() => undefined);
        // Longer than the ZooKeeper client's own timeout (gossip.allocateTimeoutMs, 5 s), after
        // which a start that did not wait gave up and exited: pods of a StatefulSet start together.
        await sleep(8000);
        expect(isAlive(readCluster(cluster.info.dir).replicas[1]!.pids.sidecar)).toBe(true);
        expect((await fetch(`${cluster.replica(1).http}/healthz`).catch(() => null))?.status).toBeUndefined();
      } finally {
        await devStart(cluster.info.dir, 'r1', 'zookeeper');
      }
      await started;
      await expect
        .poll(async () => (await send(1, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(950, 2))).status, { timeout: 60_000, interval: 500 })
        .toBe(200);
      await expect.poll(() => counts('id >= 950 AND id < 952'), { timeout: 20_000, interval: 200 }).toEqual([2, 2, 2]);
    }, 180_000);

    it('a staging table that could not be emptied is never handed out with an earlier insert’s parts', async () => {
      const A = 1000;
      const B = 1001;
      await devKill(cluster.info.dir, 'r1', 'zookeeper');
      let answerA: Promise<string> = Promise.resolve('');
      try {
        // A is staged, then waits for an allocation that cannot come; its ClickHouse dies meanwhile,
        // so emptying its staging table fails.
        answerA = send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(A, 1)).then(async (res) => `${res.status} ${res.headers.get('x-chorus-error-code')}`);
        await expect
          .poll(async () => Number((await cluster.clickhouse(0, "SELECT count() FROM system.parts WHERE database = '_chorus' AND active")).trim()), { timeout: 5000, interval: 50 })
          .toBeGreaterThan(0);
        await devKill(cluster.info.dir, 'r1', 'clickhouse');
        expect(await answerA).toMatch(/^503 CHORUS_(ALLOCATOR|CLICKHOUSE)_UNAVAILABLE$/);
      } finally {
        await devStart(cluster.info.dir, 'r1', 'clickhouse');
        await devStart(cluster.info.dir, 'r1', 'zookeeper');
      }
      // The next insert on r1 gets that staging table back (or a new one): only B's rows go with it.
      await expect
        .poll(async () => (await send(0, `INSERT INTO ${TABLE} FORMAT TabSeparated`, ROWS(B, 1))).status, { timeout: 60_000, interval: 500 })
        .toBe(200);
      await expect.poll(() => counts(`id = ${B}`), { timeout: 20_000, interval: 200 }).toEqual([1, 1, 1]);
      // A was never acknowledged: recovery drops its intent (nothing was allocated), and no
      // later insert carries its part.
      await sleep(3000);
      expect(await counts(`id = ${A}`)).toEqual([0, 0, 0]);
    }, 180_000);
  });
});
