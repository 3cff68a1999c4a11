import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClickHouseHttp, ClickHouseQueryError } from '../../src/clickhouse/http.js';
import { startClickHouse, type ClickHouseBackend } from '../../src/dev/clickhouse.js';
import { scratchRoot } from '../../src/dev/cluster.js';
import { freePort, stopProcess } from '../../src/dev/processes.js';

/**
 * The behaviours of ClickHouse's HTTP interface that Chorus relies on, asked of both dev
 * backends with the same requests: Debian's clickhouse-server 18.16 and ClickHouse 26.7's
 * engine behind the chdb front. A difference between the two that Chorus must know of lives in
 * src/clickhouse/dialect.ts; these tests say what does not differ.
 */
const BACKENDS: ClickHouseBackend[] = ['server', 'chdb'];

interface Running {
  backend: ClickHouseBackend;
  url: string;
  pid: number;
  dir: string;
  ch: ClickHouseHttp;
}

const running = new Map<ClickHouseBackend, Running>();

beforeAll(async () => {
  await Promise.all(
    BACKENDS.map(async (backend) => {
      const dir = mkdtempSync(join(scratchRoot(), `contract-${backend}-`));
      const http = await freePort();
      const pid = await startClickHouse(backend, dir, { http, tcp: await freePort(), interserver: await freePort() });
      const url = `http://127.0.0.1:${http}`;
      const ch = new ClickHouseHttp({ url, user: 'default', password: '', requestTimeoutMs: 30_000 });
      await ch.detect();
      running.set(backend, { backend, url, pid, dir, ch });
    }),
  );
});

afterAll(async () => {
  for (const r of running.values()) {
    r.ch.close();
    await stopProcess(r.pid, 20_000);
    if (!process.env.CHORUS_KEEP_TEST_DIRS) rmSync(r.dir, { recursive: true, force: true });
  }
});

const on = (backend: ClickHouseBackend) => running.get(backend)!;

describe.each(BACKENDS)('ClickHouse over HTTP: %s', (backend) => {
  const table = (name: string) => `default.${name}`;

  it('answers /ping and tells its version', async () => {
    const r = on(backend);
    const res = await fetch(`${r.url}/ping`);
    expect(await res.text()).toBe('Ok.\n');
    expect(r.ch.dialect.major).toBe(backend === 'server' ? 18 : 26);
  });

  it('KILL QUERY ... SYNC by a staging table name pieced together (what StagingPool.release sends) is accepted and does not kill itself', async () => {
    const { ch } = on(backend);
    await expect(ch.exec("KILL QUERY WHERE position(query, concat('`_chorus`', '.', '`s_none_0`')) > 0 SYNC")).resolves.toBeDefined();
  });

  it('reads the statement from the URL and the rows from the body, in any text format, or the whole statement from the body', async () => {
    const { ch } = on(backend);
    await ch.exec(`CREATE TABLE ${table('rows')} (day Date, id UInt64, s String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`);
    await ch.request(`INSERT INTO ${table('rows')} VALUES`, { body: "('2026-11-01', 1, 'a'), ('2026-10-01', 2, 'b')" });
    await ch.request(`INSERT INTO ${table('rows')} FORMAT JSONEachRow`, { body: '{"day":"2026-11-02","id":3,"s":"c"}\n' });
    await ch.request(`INSERT INTO ${table('rows')} FORMAT CSV`, { body: '2026-11-03,4,"d,e"\n' });
    await ch.request(`INSERT INTO ${table('rows')} FORMAT TabSeparated`, { body: gzipSync('2026-11-04\t5\tf\n'), headers: { 'Content-Encoding': 'gzip' } });
    // RowBinary: Date as UInt16 days, UInt64, String with a varint length.
    const day = Math.round(Date.UTC(2026, 10, 5) / 86_400_000);
    const row = Buffer.concat([Buffer.from(Uint16Array.of(day).buffer), Buffer.from(BigUint64Array.of(6n).buffer), Buffer.from([1]), Buffer.from('g')]);
    await ch.request(`INSERT INTO ${table('rows')} FORMAT RowBinary`, { body: row });
    // Binary rows after the whole statement in the body.
    const row7 = Buffer.concat([Buffer.from(Uint16Array.of(day).buffer), Buffer.from(BigUint64Array.of(7n).buffer), Buffer.from([1]), Buffer.from('h')]);
    const res = await fetch(`${on(backend).url}/`, { method: 'POST', body: Buffer.concat([Buffer.from(`INSERT INTO ${table('rows')} FORMAT RowBinary\n`), row7]) });
    expect(res.status, await res.text()).toBe(200);
    expect(await ch.rows<{ id: number; s: string }>(`SELECT id, s FROM ${table('rows')} WHERE id < 7 ORDER BY id`)).toEqual([
      { id: 1, s: 'a' },
      { id: 2, s: 'b' },
      { id: 3, s: 'c' },
      { id: 4, s: 'd,e' },
      { id: 5, s: 'f' },
      { id: 6, s: 'g' },
    ]);
    // One insert that spans two partitions makes one part in each (merges stopped, as on staging tables).
    await ch.exec(`CREATE TABLE ${table('two')} AS ${table('rows')}`);
    await ch.exec(`SYSTEM STOP MERGES ${table('two')}`);
    await ch.request(`INSERT INTO ${table('two')} VALUES`, { body: "('2026-11-01', 1, 'a'), ('2026-10-01', 2, 'b')" });
    const parts = await ch.rows<{ partition_id: string }>(`SELECT partition_id FROM system.parts WHERE database = 'default' AND table = 'two' AND active ORDER BY name`);
    expect(parts.map((p) => p.partition_id)).toEqual(['202610', '202611']);
  });

  it('takes settings and the database as URL parameters', async () => {
    const { ch } = on(backend);
    expect((await ch.request("SELECT value FROM system.settings WHERE name = 'max_threads'", { params: { max_threads: '1' } })).trim()).toBe('1');
    // ... for that request only.
    expect((await ch.request("SELECT value FROM system.settings WHERE name = 'max_threads'")).trim()).not.toBe('1');
    expect((await ch.request('SELECT currentDatabase()', { params: { database: 'system' } })).trim()).toBe('system');
    expect((await ch.request('SELECT currentDatabase()')).trim()).toBe('default');
    await expect(ch.request('SELECT 1', { params: { no_such_setting_at_all: '1' } })).rejects.toBeInstanceOf(ClickHouseQueryError);
    // A value the setting refuses fails that request and leaves nothing behind for the next.
    await expect(ch.request('SELECT 1', { params: { max_threads: '1', max_block_size: 'many' } })).rejects.toBeInstanceOf(ClickHouseQueryError);
    expect((await ch.request("SELECT value FROM system.settings WHERE name = 'max_block_size'")).trim()).toMatch(/^\d+$/);
    expect((await ch.request("SELECT value FROM system.settings WHERE name = 'max_threads'")).trim()).not.toBe('1');
  });

  it("answers errors with a status, ClickHouse's code and a message Chorus can read", async () => {
    const r = on(backend);
    const res = await fetch(`${r.url}/?query=${encodeURIComponent('SELECT * FROM default.no_such_table')}`);
    expect(res.status).toBeGreaterThanOrEqual(400);
    const body = await res.text();
    expect(body).toMatch(/^Code: 60[.,] /);
    if (backend === 'chdb') {
      expect(res.status).toBe(404);
      expect(res.headers.get('x-clickhouse-exception-code')).toBe('60');
    }
    const err = await r.ch.exec('SELECT * FROM default.no_such_table').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClickHouseQueryError);
    expect((err as ClickHouseQueryError).clickhouseCode).toBe(60);
    expect((err as ClickHouseQueryError).message).not.toMatch(/^Code:|\(version /);
    const syntax = await r.ch.exec('SELEC 1').catch((e: unknown) => e);
    expect((syntax as ClickHouseQueryError).clickhouseCode).toBe(62);
  });

  it("finds a table's files where the dialect says, and checksums.txt is the same for the same rows in two tables", async () => {
    const { ch } = on(backend);
    for (const name of ['same_a', 'same_b']) {
      await ch.exec(`CREATE TABLE ${table(name)} (id UInt64, s String) ENGINE = MergeTree ORDER BY id`);
      await ch.request(`INSERT INTO ${table(name)} FORMAT JSONEachRow`, { body: '{"id":1,"s":"x"}\n{"id":2,"s":"y"}\n' });
    }
    const hashes: string[] = [];
    for (const name of ['same_a', 'same_b']) {
      const [t] = await ch.rows<{ paths: string[] }>(`SELECT ${ch.dialect.tableDataPaths} AS paths FROM system.tables WHERE database = 'default' AND name = '${name}'`);
      const [p] = await ch.rows<{ path: string; name: string }>(`SELECT path, name FROM system.parts WHERE database = 'default' AND table = '${name}' AND active`);
      expect(p!.path.startsWith(t!.paths[0]!)).toBe(true);
      if (backend === 'chdb') expect(t!.paths[0]).toMatch(/\/store\/[0-9a-f]{3}\/[0-9a-f-]{36}\/$/);
      hashes.push(createHash('sha256').update(readFileSync(join(p!.path, 'checksums.txt'))).digest('hex'));
    }
    expect(hashes[0]).toBe(hashes[1]);
  });

  it('ATTACH PART takes a copy from detached/ under any name and gives it the next block number', async () => {
    const { ch } = on(backend);
    await ch.exec(`CREATE TABLE ${table('attach_src')} (id UInt64) ENGINE = MergeTree ORDER BY id`);
    await ch.exec(`CREATE TABLE ${table('attach_dst')} (id UInt64) ENGINE = MergeTree ORDER BY id`);
    await ch.request(`INSERT INTO ${table('attach_src')} VALUES`, { body: '(7), (8)' });
    await ch.request(`INSERT INTO ${table('attach_dst')} VALUES`, { body: '(1)' });
    const [src] = await ch.rows<{ path: string }>(`SELECT path FROM system.parts WHERE database = 'default' AND table = 'attach_src' AND active`);
    const [dst] = await ch.rows<{ paths: string[] }>(`SELECT ${ch.dialect.tableDataPaths} AS paths FROM system.tables WHERE database = 'default' AND name = 'attach_dst'`);
    cpSync(src!.path, join(dst!.paths[0]!, 'detached', 'all_9_9_0'), { recursive: true });
    await ch.exec(`ALTER TABLE ${table('attach_dst')} ATTACH PART 'all_9_9_0'`);
    const parts = await ch.rows<{ name: string }>(`SELECT name FROM system.parts WHERE database = 'default' AND table = 'attach_dst' AND active ORDER BY name`);
    expect(parts.map((p) => p.name)).toEqual(['all_1_1_0', 'all_2_2_0']);
    expect((await ch.request(`SELECT sum(id) FROM ${table('attach_dst')}`)).trim()).toBe('16');
  });

  it('DETACH PART exists where the dialect says it does', async () => {
    const { ch } = on(backend);
    await ch.exec(`CREATE TABLE ${table('detach')} (id UInt64) ENGINE = MergeTree ORDER BY id`);
    await ch.request(`INSERT INTO ${table('detach')} VALUES`, { body: '(1)' });
    const detach = ch.exec(`ALTER TABLE ${table('detach')} DETACH PART 'all_1_1_0'`);
    if (ch.dialect.hasDetachPart) {
      await detach;
      expect((await ch.request(`SELECT count() FROM ${table('detach')}`)).trim()).toBe('0');
    } else await expect(detach).rejects.toBeInstanceOf(ClickHouseQueryError);
  });
});
