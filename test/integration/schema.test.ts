import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { devKill, devStart, devWipe } from '../../src/dev/cluster.js';
import { TestCluster } from '../support/cluster.js';

/**
 * Issue 14: CREATE / DROP / RENAME / ALTER TABLE and CREATE / DROP DATABASE sent to any replica's
 * Chorus are log entries applied in LSN order on every replica (those away catch up, a wiped one
 * clones the schema), so a user creates and changes tables once, through any replica.
 */
const ROW_HASH = 'cityHash64(id, payload)';

describe('schema changes are replicated in LSN order', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: { testFaults: true, 'gossip.allocateTimeoutMs': 2000, 'replication.retryDelayMs': 100, 'clickhouse.databases': ['default', 'analytics'] },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const statement = async (replica: number, query: string, params: Record<string, string> = {}) => {
    const res = await cluster.chorus(replica, { query, params });
    return { status: res.status, code: res.headers.get('x-chorus-error-code'), lsn: Number(res.headers.get('x-chorus-lsn') ?? 0), text: await res.text() };
  };

  /** Sends until acknowledged: a 503 (the table changed while it was staged, say) stored nothing, and is sent again. */
  const insert = async (replica: number, table: string, body: string, columns = '') => {
    for (;;) {
      const res = await cluster.chorus(replica, { query: `INSERT INTO ${table}${columns} FORMAT TabSeparated`, body });
      const text = await res.text();
      if (res.status === 200) return;
      expect(res.status, text).toBe(503);
      await sleep(50);
    }
  };

  /** The table's definition on each replica, as ClickHouse shows it ('' where it does not exist). */
  const definitions = async (database: string, table: string) =>
    Promise.all([0, 1, 2].map(async (i) => (await cluster.clickhouse(i, `SELECT create_table_query FROM system.tables WHERE database = '${database}' AND name = '${table}'`)).trim()));

  /** Every replica holds `expected` rows with one row hash; a replica still without a column of the hash is waited for too. */
  const settled = async (table: string, expected: number, timeoutMs = 30_000, rowHash = ROW_HASH) => {
    const deadline = Date.now() + timeoutMs;
    let f: Array<{ count: number; hash: string }> = [];
    while (Date.now() < deadline) {
      f = await cluster.fingerprints(table, rowHash).catch(() => []);
      if (f.length === 3 && f.every((x) => x.count === expected) && new Set(f.map((x) => x.hash)).size === 1) break;
      await sleep(200);
    }
    expect(f.map((x) => x.count)).toEqual([expected, expected, expected]);
    expect(new Set(f.map((x) => x.hash)).size).toBe(1);
  };

  it('a database and a table created through r1 exist on all three with the same definition; rows inserted right after through r2 and r3 arrive everywhere', async () => {
    const db = await statement(0, 'CREATE DATABASE analytics');
    expect(db.status, db.text).toBe(200);
    const created = await statement(0, 'CREATE TABLE analytics.events (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id');
    expect(created.status, created.text).toBe(200);
    expect(created.lsn).toBeGreaterThan(db.lsn);
    const defs = await definitions('analytics', 'events');
    expect(defs[0]).toMatch(/ENGINE = MergeTree/);
    expect(new Set(defs).size).toBe(1);
    // At once, through the other replicas: the CREATE is answered once every live replica has it.
    await insert(1, 'analytics.events', '2026-11-01\t1\tone\n');
    await insert(2, 'analytics.events', '2026-11-02\t2\ttwo\n');
    await settled('analytics.events', 2);
    // Again: nothing to do with IF NOT EXISTS, an error without it; nothing recorded either way.
    const again = await statement(1, 'CREATE TABLE IF NOT EXISTS analytics.events (id UInt64) ENGINE = MergeTree ORDER BY id');
    expect(again.status, again.text).toBe(200);
    expect(again.lsn).toBe(0);
    expect((await statement(1, 'CREATE TABLE analytics.events (id UInt64) ENGINE = MergeTree ORDER BY id')).code).toBe('CHORUS_BAD_QUERY');
    // A table made like another one copies its definition, the same on every replica.
    const copy = await statement(2, 'CREATE TABLE analytics.events_copy AS analytics.events');
    expect(copy.status, copy.text).toBe(200);
    const copies = await definitions('analytics', 'events_copy');
    expect(new Set(copies).size).toBe(1);
    expect(copies[0]).toContain('PARTITION BY toYYYYMM(day)');
  });

  it('ALTER TABLE ... ADD COLUMN racing inserts through the other replicas: every insert is stored once, every replica ends with the same definition and rows', async () => {
    const table = 'default.schema_race';
    expect((await statement(0, `CREATE TABLE ${table} (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`)).status).toBe(200);
    let next = 0;
    let stop = false;
    const writers = [1, 2].map(async (replica) => {
      while (!stop) {
        const id = ++next;
        await insert(replica, table, `2026-11-0${1 + (id % 9)}\t${id}\tp${id}\n`, ' (day, id, payload)');
      }
    });
    await sleep(500);
    const added = await statement(0, `ALTER TABLE ${table} ADD COLUMN tag String DEFAULT 'none' AFTER id`);
    expect(added.status, added.text).toBe(200);
    await sleep(500);
    stop = true;
    await Promise.all(writers);
    await settled(table, next);
    const defs = await definitions('default', 'schema_race');
    expect(new Set(defs).size).toBe(1);
    expect(defs[0]).toMatch(/`?tag`? String DEFAULT \\?'none\\?'/);
    // Rows with the new column go through any replica.
    await insert(2, table, `2026-11-05\t${++next}\tp\ttagged\n`, ' (day, id, payload, tag)');
    await settled(table, next);
    for (const i of [0, 1, 2]) expect((await cluster.clickhouse(i, `SELECT countIf(tag = 'tagged'), countIf(tag = 'none') FROM ${table}`)).trim()).toBe(`1\t${next - 1}`);
    console.log(`schema race: ${next} inserts around an ADD COLUMN, all stored once`);
  });

  it('a replica down during an ADD COLUMN and an UPDATE catches up to the same definition and rows; wiped, it clones them', async () => {
    const table = 'default.schema_away';
    expect((await statement(1, `CREATE TABLE ${table} (day Date, id UInt64, payload String) ENGINE = MergeTree ORDER BY id`)).status).toBe(200);
    for (let id = 1; id <= 10; id++) await insert(id % 2, table, `2026-11-01\t${id}\tp${id}\n`);
    await settled(table, 10);
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'KILL');
    await devKill(cluster.info.dir, 'r3', 'clickhouse', 'KILL');
    // Every live replica: r3 is down, so the ALTER is answered once r1 and r2 have it.
    const added = await statement(0, `ALTER TABLE ${table} ADD COLUMN score UInt32 DEFAULT 0`);
    expect(added.status, added.text).toBe(200);
    for (let id = 11; id <= 20; id++) await insert(id % 2, table, `2026-11-01\t${id}\tp${id}\t${id}\n`, ' (day, id, payload, score)');
    const updated = await statement(1, `ALTER TABLE ${table} UPDATE score = score * 10 WHERE id % 2 = 0`, { mutations_sync: '1' });
    expect(updated.status, updated.text).toBe(200);
    await devStart(cluster.info.dir, 'r3', 'all');
    // The score in the hash: equal once r3 has the column and has finished the UPDATE too.
    const withScore = 'cityHash64(id, payload, score)';
    await settled(table, 20, 30_000, withScore);
    expect(new Set(await definitions('default', 'schema_away')).size).toBe(1);
    const scores = await Promise.all([0, 1, 2].map((i) => cluster.clickhouse(i, `SELECT sum(score) FROM ${table}`)));
    // Rows 11..20 carry their id as score; the even ones were multiplied by 10.
    expect(scores.map((s) => s.trim())).toEqual(['875', '875', '875']);

    await devKill(cluster.info.dir, 'r3', 'sidecar', 'TERM');
    await devWipe(cluster.info.dir, 'r3');
    await devStart(cluster.info.dir, 'r3', 'all');
    await settled(table, 20, 60_000, withScore);
    expect(new Set(await definitions('default', 'schema_away')).size).toBe(1);
    expect((await cluster.clickhouse(2, `SELECT sum(score) FROM ${table}`)).trim()).toBe('875');
    // The clone took the database created through Chorus, and its table, too.
    await settled('analytics.events', 2);
  });

  it('RENAME TABLE and DROP TABLE through one replica apply on every replica', async () => {
    // Answered once every live member has them: wait until each sees the others alive again (r3 was away).
    for (let i = 0; i < 3; i++) {
      for (const deadline = Date.now() + 20_000; (await cluster.metric(i, 'chorus_members', { state: 'alive' })) < 3 && Date.now() < deadline; ) await sleep(200);
    }
    const table = 'default.schema_old';
    expect((await statement(0, `CREATE TABLE ${table} (day Date, id UInt64, payload String) ENGINE = MergeTree ORDER BY id`)).status).toBe(200);
    for (let id = 1; id <= 5; id++) await insert(id % 3, table, `2026-11-01\t${id}\tp${id}\n`);
    const renamed = await statement(1, `RENAME TABLE ${table} TO default.schema_new`);
    expect(renamed.status, renamed.text).toBe(200);
    expect(await definitions('default', 'schema_old')).toEqual(['', '', '']);
    await settled('default.schema_new', 5);
    await insert(2, 'default.schema_new', '2026-11-01\t6\tp6\n');
    await settled('default.schema_new', 6);
    const dropped = await statement(2, 'DROP TABLE default.schema_new');
    expect(dropped.status, dropped.text).toBe(200);
    expect(await definitions('default', 'schema_new')).toEqual(['', '', '']);
    expect((await statement(0, 'DROP TABLE IF EXISTS default.schema_new')).status).toBe(200);
    // A table that is nowhere is ClickHouse's to refuse, as it would.
    expect((await statement(0, 'DROP TABLE default.schema_new')).status).toBeGreaterThanOrEqual(400);
  });

  it('schema statements Chorus does not replicate change nothing on any replica and answer with their code', async () => {
    const lsnBefore = await cluster.nextLsn();
    const refused: Array<[string, string]> = [
      ['CREATE TABLE default.s_select ENGINE = MergeTree ORDER BY id AS SELECT 1 AS id', 'NOT_REPLICATED_STATEMENT'],
      ['CREATE TABLE default.s_cluster ON CLUSTER c (id UInt64) ENGINE = MergeTree ORDER BY id', 'NOT_REPLICATED_STATEMENT'],
      ['CREATE TABLE default.s_bad (id UInt64) ENGINE = MergeTree ORDER BY no_such_column', 'BAD_QUERY'],
      ['ALTER TABLE default.schema_race ADD COLUMN broken NoSuchType', 'BAD_QUERY'],
      ['ALTER TABLE default.schema_race ADD COLUMN x UInt8 SETTINGS alter_sync = 2', 'UNSUPPORTED_SETTING'],
      ['ALTER TABLE default.schema_race ADD COLUMN x UInt8, DELETE WHERE 1', 'NOT_REPLICATED_STATEMENT'],
      ['ALTER TABLE default.schema_race MODIFY ORDER BY id', 'NOT_REPLICATED_STATEMENT'],
      ['RENAME TABLE default.schema_race TO system.stolen', 'NOT_REPLICATED_STATEMENT'],
      ['EXCHANGE TABLES default.schema_race AND default.schema_away', 'NOT_REPLICATED_STATEMENT'],
      ['DETACH TABLE default.schema_race', 'NOT_REPLICATED_STATEMENT'],
      ['DROP TABLE default.schema_race, default.schema_away', 'NOT_REPLICATED_STATEMENT'],
    ];
    const before = await definitions('default', 'schema_race');
    for (const [query, code] of refused) {
      const res = await statement(0, query);
      expect({ query, code: res.code }, res.text).toEqual({ query, code: `CHORUS_${code}` });
    }
    expect(await cluster.nextLsn()).toBe(lsnBefore);
    expect(await definitions('default', 'schema_race')).toEqual(before);
    for (const name of ['s_select', 's_cluster', 's_bad']) expect(await definitions('default', name)).toEqual(['', '', '']);
    // A table of another engine stays where it was created, as before.
    expect((await statement(0, 'CREATE TABLE default.s_local (id UInt64) ENGINE = Memory')).status).toBe(200);
    expect((await definitions('default', 's_local')).map((d) => d !== '')).toEqual([true, false, false]);
  });
});
