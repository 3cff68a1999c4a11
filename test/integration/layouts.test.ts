import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dialect } from '../../src/clickhouse/dialect.js';
import { TestCluster, testBackend } from '../support/cluster.js';

/**
 * Both part layouts (Compact and Wide), both database engines (Atomic and Ordinary) and parts
 * with projections, inserted through one replica, moved to the others over the interserver
 * port, verified and attached; on whichever backend the suite runs (CHORUS_TEST_CLICKHOUSE).
 * Each release has what it has: 18.16 writes only Wide parts into Ordinary databases and has
 * no projections.
 */
const ROW_HASH = 'cityHash64(id, s)';

describe(`part layouts and database engines (${testBackend()})`, () => {
  let cluster: TestCluster;
  let dialect: Dialect;

  beforeAll(async () => {
    cluster = await TestCluster.start({ replicas: 3, sidecarConfig: { 'clickhouse.databases': ['default', 'ord'] } });
    dialect = new Dialect((await cluster.clickhouse(0, 'SELECT version()')).trim());
    // Ordinary is the only engine of 18.16, and deprecated (behind a setting) where Atomic is the default.
    const ordinary = dialect.defaultDatabaseEngine === 'Atomic' ? '?allow_deprecated_database_ordinary=1' : '';
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${cluster.replica(i).clickhouse}/${ordinary}`, { method: 'POST', body: 'CREATE DATABASE ord ENGINE = Ordinary' });
      if (!r.ok) throw new Error(await r.text());
    }
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  /** Inserts 3 rows through replica 0 and waits until every replica has them. */
  async function insertAndConverge(table: string): Promise<number> {
    const res = await cluster.chorus(0, { query: `INSERT INTO ${table} FORMAT JSONEachRow`, body: '{"id":1,"s":"a"}\n{"id":2,"s":"b"}\n{"id":3,"s":"c"}\n' });
    expect(res.status, await res.clone().text()).toBe(200);
    const lsn = Number(res.headers.get('x-chorus-lsn'));
    const prints = await cluster.waitConverged(table, ROW_HASH, 3, 15_000);
    expect(prints.map((p) => p.count)).toEqual([3, 3, 3]);
    expect(new Set(prints.map((p) => p.hash)).size).toBe(1);
    return lsn;
  }

  async function partsOf(i: number, database: string, table: string): Promise<Array<{ name: string; path: string; type: string }>> {
    const type = dialect.major >= 20 ? 'part_type' : "'Wide'";
    const text = await cluster.clickhouse(i, `SELECT name, path, ${type} FROM system.parts WHERE database = '${database}' AND table = '${table}' AND active FORMAT TSV`);
    return text.trim().split('\n').filter(Boolean).map((line) => {
      const [name, path, partType] = line.split('\t');
      return { name: name!, path: path!, type: partType! };
    });
  }

  async function dataPaths(i: number, database: string, table: string): Promise<string[]> {
    const text = await cluster.clickhouse(i, `SELECT ${dialect.tableDataPaths} FROM system.tables WHERE database = '${database}' AND name = '${table}' FORMAT JSONEachRow`);
    return Object.values(JSON.parse(text) as Record<string, string[]>)[0]!;
  }

  it("a small part (Compact where the release has it) moves between replicas into the table's directory from data_paths", async () => {
    await cluster.onEvery('CREATE TABLE default.small (id UInt64, s String) ENGINE = MergeTree ORDER BY id');
    const lsn = await insertAndConverge('default.small');
    for (let i = 0; i < 3; i++) {
      const [part] = await partsOf(i, 'default', 'small');
      const [path] = await dataPaths(i, 'default', 'small');
      // Where the release puts a new table: under store/<uuid>/ in an Atomic database.
      if (dialect.defaultDatabaseEngine === 'Atomic') expect(path).toMatch(/\/store\/[0-9a-f]{3}\/[0-9a-f-]{36}\/$/);
      expect(part!.path.startsWith(path!)).toBe(true);
      const files = readdirSync(part!.path);
      if (dialect.major >= 20) {
        expect(part!.type).toBe('Compact');
        expect(files).toContain('data.bin');
      } else expect(files).toContain('id.bin');
      // Every replica keeps the copy in its part store, with the same files.
      expect(readdirSync(join(cluster.replica(i).dir, 'chorus', 'parts', String(lsn))).sort()).toEqual(files.sort());
    }
  });

  it('a Wide part moves between replicas', async () => {
    const wide = dialect.major >= 20 ? ' SETTINGS min_bytes_for_wide_part = 0, min_rows_for_wide_part = 0' : '';
    await cluster.onEvery(`CREATE TABLE default.wide (id UInt64, s String) ENGINE = MergeTree ORDER BY id${wide}`);
    await insertAndConverge('default.wide');
    for (let i = 0; i < 3; i++) {
      const [part] = await partsOf(i, 'default', 'wide');
      expect(part!.type).toBe('Wide');
      expect(readdirSync(part!.path)).toEqual(expect.arrayContaining(['id.bin', 's.bin', 'checksums.txt']));
    }
  });

  it('a table in an Ordinary database replicates; its files are under data/<db>/<table>/', async () => {
    await cluster.onEvery('CREATE TABLE ord.t (id UInt64, s String) ENGINE = MergeTree ORDER BY id');
    await insertAndConverge('ord.t');
    for (let i = 0; i < 3; i++) expect((await dataPaths(i, 'ord', 't'))[0]).toMatch(/\/data\/ord\/t\/$/);
  });

  it('a part with a projection moves with its projection', async (ctx) => {
    if (dialect.major < 22) ctx.skip(); // projections arrived in 21.6, on by default in 22.2
    await cluster.onEvery('CREATE TABLE default.proj (id UInt64, s String, PROJECTION by_s (SELECT s, count() GROUP BY s)) ENGINE = MergeTree ORDER BY id');
    const lsn = await insertAndConverge('default.proj');
    for (let i = 0; i < 3; i++) {
      const [part] = await partsOf(i, 'default', 'proj');
      expect(existsSync(join(part!.path, 'by_s.proj', 'checksums.txt'))).toBe(true);
      expect(existsSync(join(cluster.replica(i).dir, 'chorus', 'parts', String(lsn), 'by_s.proj', 'checksums.txt'))).toBe(true);
      // The projection answers on every replica, from the attached copy.
      expect((await cluster.clickhouse(i, 'SELECT s, count() FROM default.proj GROUP BY s ORDER BY s FORMAT TSV')).trim()).toBe('a\t1\nb\t1\nc\t1');
    }
  });
});
