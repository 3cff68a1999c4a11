import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { devKill, devStart, devWipe, readCluster } from '../../src/dev/cluster.js';
import { isAlive } from '../../src/dev/processes.js';
import { runCli } from '../support/built-cli.js';
import { cliEnv, testBackend, TestCluster } from '../support/cluster.js';

/**
 * Issue 14: mutations (ALTER TABLE ... UPDATE/DELETE/CLEAR COLUMN, lightweight DELETE FROM) and
 * schema changes (CREATE / DROP / RENAME / ALTER TABLE, CREATE / DROP DATABASE) sent to any
 * replica's Chorus are log entries, ordered against the table's inserts by barriers, so every
 * replica changes exactly the same rows and ends with the same tables: an insert allocated before
 * a mutation is changed by it everywhere, one allocated after it nowhere; those away catch up,
 * a wiped one clones. One cluster serves both halves.
 */
const ROW_HASH = 'cityHash64(id, payload)';
const DDL = (name: string) => `CREATE TABLE ${name} (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;
const backend = testBackend();
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

describe('mutations are replicated in LSN order', () => {
  const row = (id: number, payload = `p${id}`) => `2026-11-0${1 + (id % 9)}\t${id}\t${payload}\n`;

  /** Sends until acknowledged (a 503 is retried: it stored nothing, or its retry is deduplicated); the LSN it answers with. */
  const insert = async (replica: number, table: string, body: string): Promise<number> => {
    for (;;) {
      const res = await cluster.chorus(replica, { query: `INSERT INTO ${table} FORMAT TabSeparated`, body });
      const text = await res.text();
      if (res.status === 200) return Number(res.headers.get('x-chorus-lsn'));
      expect(res.status, text).toBe(503);
      await sleep(50);
    }
  };

  const statement = async (replica: number, query: string, params: Record<string, string> = {}) => {
    const res = await cluster.chorus(replica, { query, params });
    return { status: res.status, code: res.headers.get('x-chorus-error-code'), lsn: Number(res.headers.get('x-chorus-lsn') ?? 0), text: await res.text() };
  };

  /** Waits until every replica holds the same rows and has applied every entry (the mutations finished too). */
  const settled = async (table: string, timeoutMs = 30_000, rowHash = ROW_HASH) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = await cluster.fingerprints(table, rowHash);
      const running = Number((await Promise.all([0, 1, 2].map((i) => cluster.clickhouse(i, `SELECT count() FROM system.mutations WHERE NOT is_done AND database = 'default'`)))).reduce((s, x) => s + Number(x.trim()), 0));
      const lag = (await Promise.all([0, 1, 2].map((i) => cluster.metric(i, 'chorus_lag_entries')))).reduce((s, x) => s + x, 0);
      if (running === 0 && lag === 0 && new Set(f.map((x) => `${x.count}:${x.hash}`)).size === 1) return f;
      if (Date.now() > deadline) return f;
      await sleep(200);
    }
  };

  /**
   * Writers through r2 and r3 race a DELETE through r1. r2's gossip is cut around the DELETE, so
   * r2's inserts allocated just before it reach r1 and r3 only after the DELETE does: the barrier
   * makes them wait for those inserts; without it they delete too early and keep those rows.
   */
  const race = async (table: string, opts: { ignoreOrdering: boolean }) => {
    await cluster.onEvery(DDL(table));
    if (opts.ignoreOrdering) for (const i of [0, 1, 2]) await cluster.armFaults(i, { ignoreOrdering: true });
    const acked: Array<{ id: number; lsn: number; replica: number }> = [];
    let next = 0;
    let stop = false;
    const writers = [1, 2].map(async (replica) => {
      while (!stop) {
        const id = ++next;
        acked.push({ id, lsn: await insert(replica, table, row(id)), replica });
      }
    });
    await sleep(500);
    await cluster.armFaults(1, { isolateGossip: true });
    // At least one insert through r2 that the DELETE matches is allocated while r2 is cut off, before the DELETE.
    const isolatedFrom = next;
    while (!acked.some((a) => a.id > isolatedFrom && a.replica === 1 && a.id % 3 === 0)) await sleep(10);
    const deleted = await statement(0, `ALTER TABLE ${table} DELETE WHERE id % 3 = 0`);
    expect(deleted.status, deleted.text).toBe(200);
    expect(deleted.lsn).toBeGreaterThan(0);
    await sleep(500);
    await cluster.armFaults(1, { isolateGossip: false });
    await sleep(500);
    stop = true;
    await Promise.all(writers);
    if (opts.ignoreOrdering) for (const i of [0, 1, 2]) await cluster.armFaults(i, { ignoreOrdering: false });
    // Exactly the rows allocated before the DELETE that match it are gone, on every replica.
    const kept = acked.filter((a) => a.lsn > deleted.lsn || a.id % 3 !== 0);
    // Unordered, the replicas never agree: wait only for the entries to be applied.
    const f = await settled(table, opts.ignoreOrdering ? 2000 : 30_000);
    return { f, kept, acked, deleted };
  };

  it('ALTER TABLE ... DELETE through r1 racing inserts through r2 and r3 leaves the same rows everywhere: those allocated before it deleted, after it kept', async () => {
    const { f, kept, acked, deleted } = await race('default.mut_race', { ignoreOrdering: false });
    expect(new Set(f.map((x) => `${x.count}:${x.hash}`)).size).toBe(1);
    expect(f.map((x) => x.count)).toEqual([kept.length, kept.length, kept.length]);
    const before = acked.filter((a) => a.lsn < deleted.lsn && a.id % 3 === 0).length;
    const after = acked.filter((a) => a.lsn > deleted.lsn && a.id % 3 === 0).length;
    expect(before).toBeGreaterThan(0);
    expect(after).toBeGreaterThan(0);
    const ids = (await cluster.clickhouse(2, 'SELECT groupArray(id) FROM (SELECT id FROM default.mut_race ORDER BY id)')).trim();
    expect(ids).toBe(`[${kept.map((k) => k.id).sort((a, b) => a - b).join(',')}]`);
    console.log(`mutation race: ${acked.length} inserts, ${before} matching rows allocated before the DELETE deleted, ${after} allocated after it kept, ${kept.length} rows on every replica`);
  });

  it('the same race with the barrier disabled leaves the replicas different', async () => {
    const { f, kept } = await race('default.mut_race_unordered', { ignoreOrdering: true });
    // r1 applied the DELETE before r2's inserts allocated ahead of it reached it, and kept them.
    expect(f[0]!.count).toBeGreaterThan(kept.length);
    expect(new Set(f.map((x) => `${x.count}:${x.hash}`)).size).toBeGreaterThan(1);
  });

  it('mutations_sync=2 answers once every replica has finished the UPDATE; mutations_sync=1 once this one has; chorus entries shows the statement', async () => {
    const table = 'default.mut_sync';
    await cluster.onEvery(DDL(table));
    for (let id = 1; id <= 20; id++) await insert(id % 3, table, row(id));
    const updated = await statement(1, `ALTER TABLE ${table} UPDATE payload = concat(payload, '!') /* a comment */ WHERE id <= 10`, { mutations_sync: '2' });
    expect(updated.status, updated.text).toBe(200);
    // Asked at once, straight from each ClickHouse: no replica still runs it.
    for (const i of [0, 1, 2]) expect((await cluster.clickhouse(i, `SELECT countIf(payload LIKE '%!') FROM ${table}`)).trim()).toBe('10');
    const cleared = await statement(2, `ALTER TABLE ${table} UPDATE payload = 'x' WHERE id > 15`, { mutations_sync: '1' });
    expect(cleared.status, cleared.text).toBe(200);
    expect((await cluster.clickhouse(2, `SELECT countIf(payload = 'x') FROM ${table}`)).trim()).toBe('5');
    await settled(table);
    const shown = await runCli(['entries', '--grpc', cluster.replica(0).grpc, '--table', table], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain("ALTER TABLE `default`.`mut_sync` UPDATE payload = 'x' WHERE id > 15");
    expect(shown.stdout).toMatch(/mutation\s+default\.mut_sync\s+applied/);
    const json = await runCli(['entries', '--grpc', cluster.replica(0).grpc, '--table', table, '--json'], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
    const statements = (JSON.parse(json.stdout) as Array<{ entry: { statement?: string } }>).map((e) => e.entry.statement).filter(Boolean);
    expect(statements).toEqual(["ALTER TABLE `default`.`mut_sync` UPDATE payload = concat(payload, '!') WHERE id <= 10", "ALTER TABLE `default`.`mut_sync` UPDATE payload = 'x' WHERE id > 15"]);
  });

  it('the origin killed after ClickHouse took the mutation: after restart it is not run a second time', async () => {
    const table = 'default.mut_crash';
    await cluster.onEvery(`CREATE TABLE ${table} (id UInt64, n UInt64) ENGINE = MergeTree ORDER BY id`);
    const first = await cluster.chorus(0, { query: `INSERT INTO ${table} FORMAT TabSeparated`, body: '1\t0\n2\t0\n' });
    expect(first.status, await first.text()).toBe(200);
    await cluster.armFaults(0, { crashAt: 'mutation.after-submit' } as never);
    const res = await statement(0, `ALTER TABLE ${table} UPDATE n = n + 1 WHERE 1`);
    // Answered once recorded (mutations_sync=0): the sidecar dies when its applier submits it.
    expect(res.status, res.text).toBe(200);
    const pid = readCluster(cluster.info.dir).replicas[0]!.pids.sidecar;
    for (let i = 0; i < 200 && isAlive(pid); i++) await sleep(50);
    expect(isAlive(pid)).toBe(false);
    await devStart(cluster.info.dir, 'r1', 'sidecar');
    const f = await settled(table, 30_000, 'cityHash64(id, n)');
    expect(new Set(f.map((x) => x.hash)).size).toBe(1);
    for (const i of [0, 1, 2]) expect((await cluster.clickhouse(i, `SELECT sum(n) FROM ${table}`)).trim()).toBe('2');
    expect((await cluster.clickhouse(0, `SELECT count() FROM system.mutations WHERE table = 'mut_crash'`)).trim()).toBe('1');
  });

  it('statements Chorus does not replicate change nothing on any replica and answer with their code', async () => {
    const table = 'default.mut_refused';
    await cluster.onEvery(DDL(table));
    for (let id = 1; id <= 6; id++) await insert(0, table, row(id));
    await settled(table);
    const before = await cluster.fingerprints(table, ROW_HASH);
    const lsnBefore = await cluster.nextLsn();
    const refused: Array<[string, string]> = [
      [`ALTER TABLE ${table} DELETE WHERE day < today()`, 'NONDETERMINISTIC_MUTATION'],
      [`ALTER TABLE ${table} UPDATE payload = toString(rand()) WHERE 1`, 'NONDETERMINISTIC_MUTATION'],
      [`ALTER TABLE ${table} DELETE WHERE id IN (SELECT id FROM ${table})`, 'NONDETERMINISTIC_MUTATION'],
      [`ALTER TABLE ${table} DELETE WHERE id = 1 SETTINGS mutations_sync = 2`, 'UNSUPPORTED_SETTING'],
      [`ALTER TABLE ${table} DELETE WHERE id = 1, DROP PARTITION 202611`, 'NOT_REPLICATED_STATEMENT'],
      [`ALTER TABLE ${table} ON CLUSTER c DELETE WHERE id = 1`, 'NOT_REPLICATED_STATEMENT'],
      [`OPTIMIZE TABLE ${table} FINAL DEDUPLICATE`, 'NOT_REPLICATED_STATEMENT'],
      [`UPDATE ${table} SET payload = 'x' WHERE id = 1`, 'NOT_REPLICATED_STATEMENT'],
      [`ALTER TABLE ${table} DELETE WHERE no_such_column = 1`, 'BAD_QUERY'],
      [`ALTER TABLE ${table} DELETE WHERE id = 1; DROP TABLE ${table}`, 'BAD_QUERY'],
    ];
    if (backend === 'server') refused.push([`DELETE FROM ${table} WHERE id = 1`, 'UNSUPPORTED_BY_CLICKHOUSE']);
    for (const [query, code] of refused) {
      const res = await statement(1, query);
      expect({ query, code: res.code }, res.text).toEqual({ query, code: `CHORUS_${code}` });
      expect(res.status).toBe(400);
    }
    const bad = await statement(1, `ALTER TABLE ${table} DELETE WHERE id = 1`, { mutations_sync: '3' });
    expect(bad.code).toBe('CHORUS_BAD_SETTING');
    expect(await cluster.nextLsn()).toBe(lsnBefore);
    expect(await cluster.fingerprints(table, ROW_HASH)).toEqual(before);
    for (const i of [0, 1, 2]) expect((await cluster.clickhouse(i, `SELECT count() FROM system.mutations WHERE table = 'mut_refused'`)).trim()).toBe('0');
    // A table Chorus does not replicate takes the same statement from ClickHouse itself.
    await cluster.clickhouse(1, 'CREATE TABLE default.mut_local (id UInt64) ENGINE = Memory');
    expect((await statement(1, 'SELECT 1')).status).toBe(200);
    if (backend === 'chdb') {
      // Where ClickHouse has it, a lightweight DELETE is replicated like any mutation.
      const lightweight = await statement(2, `DELETE FROM ${table} WHERE id = 2`);
      expect(lightweight.status, lightweight.text).toBe(200);
      const f = await settled(table);
      expect(f.map((x) => x.count)).toEqual([5, 5, 5]);
    }
  });
});

describe('schema changes are replicated in LSN order', () => {
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

  it('a replica down during an ADD COLUMN, an UPDATE and a DELETE catches up to the same definition and rows; wiped, it clones them', async () => {
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
    const deleted = await statement(0, `ALTER TABLE ${table} DELETE WHERE id > 18`);
    expect(deleted.status, deleted.text).toBe(200);
    await devStart(cluster.info.dir, 'r3', 'all');
    // The score in the hash: equal once r3 has the column and has finished the UPDATE too.
    const withScore = 'cityHash64(id, payload, score)';
    await settled(table, 18, 30_000, withScore);
    expect(new Set(await definitions('default', 'schema_away')).size).toBe(1);
    const scores = await Promise.all([0, 1, 2].map((i) => cluster.clickhouse(i, `SELECT sum(score) FROM ${table}`)));
    // Rows 11..18 carry their id as score, the even ones multiplied by 10; 19 and 20 were deleted.
    expect(scores.map((s) => s.trim())).toEqual(['656', '656', '656']);

    await devKill(cluster.info.dir, 'r3', 'sidecar', 'TERM');
    await devWipe(cluster.info.dir, 'r3');
    await devStart(cluster.info.dir, 'r3', 'all');
    await settled(table, 18, 60_000, withScore);
    expect(new Set(await definitions('default', 'schema_away')).size).toBe(1);
    expect((await cluster.clickhouse(2, `SELECT sum(score) FROM ${table}`)).trim()).toBe('656');
    // The clone took the mutated parts, not the mutations: nothing runs again there.
    expect((await cluster.clickhouse(2, `SELECT count() FROM system.mutations WHERE database = 'default'`)).trim()).toBe('0');
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

  it('a schema change one replica cannot run is reported there and retried until it can, never skipped', async () => {
    const table = 'default.schema_conflict';
    expect((await statement(0, `CREATE TABLE ${table} (id UInt64, payload String) ENGINE = MergeTree ORDER BY id`)).status).toBe(200);
    // By hand, on r3's ClickHouse alone: the column the ALTER adds is there already.
    await cluster.clickhouse(2, `ALTER TABLE ${table} ADD COLUMN extra UInt8`);
    const res = await statement(0, `ALTER TABLE ${table} ADD COLUMN extra UInt8 DEFAULT 7`, { distributed_ddl_task_timeout: '3' });
    expect([res.status, res.code], res.text).toEqual([504, 'CHORUS_SCHEMA_TIMEOUT']);
    expect(res.text).toMatch(/not applied on r3/);
    const failing = async () => ((await (await fetch(`${cluster.replica(2).http}/_chorus/status`)).json()) as { failing: Array<{ lsn: number; kind: string; error: string }> }).failing;
    await expect.poll(failing, { timeout: 10_000, interval: 200 }).toEqual([expect.objectContaining({ lsn: res.lsn, kind: 'schema', error: expect.stringMatching(/extra/) })]);
    expect(await cluster.metric(2, 'chorus_apply_failures_total', { kind: 'schema' })).toBeGreaterThan(0);
    // Mended by hand, it is applied there at its next try, and the table is the same everywhere.
    await cluster.clickhouse(2, `ALTER TABLE ${table} DROP COLUMN extra`);
    await expect.poll(async () => new Set(await definitions('default', 'schema_conflict')).size, { timeout: 20_000, interval: 200 }).toBe(1);
    expect((await definitions('default', 'schema_conflict'))[2]).toMatch(/DEFAULT 7/);
    expect(await failing()).toEqual([]);
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
