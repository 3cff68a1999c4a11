import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { runCli } from '../support/built-cli.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { devKill, devStart, scratchRoot } from '../../src/dev/cluster.js';
import { cliEnv, grpcCredentials, TestCluster } from '../support/cluster.js';

const cli = runCli;

interface CliStatus {
  healthy: boolean;
  members: Array<{ name: string; state: string; appliedWatermark: number; lagEntries: number; ready: boolean }>;
}

/** Issue 5: the Admin API, the chorus CLI, metrics, configuration errors and shutdown. */
describe('operating a shard', () => {
  let cluster: TestCluster;
  const TABLE = 'default.ops';

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: { 'gossip.probeIntervalMs': 200, 'gossip.probeTimeoutMs': 200, 'gossip.suspicionTimeoutMs': 1500 },
    });
    await cluster.onEvery(`CREATE TABLE ${TABLE} (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`);
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const insert = (replica: number, id: number) => cluster.chorus(replica, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: `2026-11-01\t${id}\n` });
  const status = async (replica: number) => {
    const r = await cli(['status', '--grpc', cluster.replica(replica).grpc, '--json'], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
    return { code: r.code, status: JSON.parse(r.stdout) as CliStatus, stderr: r.stderr };
  };

  it('/metrics counters move by exactly the inserts and dedup hits performed', async () => {
    const metric = (name: string, labels: Record<string, string>) => cluster.metric(0, name, labels);
    const okBefore = await metric('chorus_inserts_total', { table: TABLE, outcome: 'ok' });
    const dedupBefore = await metric('chorus_inserts_total', { table: TABLE, outcome: 'deduplicated' });
    const hitsBefore = await metric('chorus_dedup_hits_total', { table: TABLE });
    for (let i = 1; i <= 7; i++) expect((await insert(0, i)).status).toBe(200);
    for (let i = 1; i <= 3; i++) expect((await insert(0, i)).headers.get('x-chorus-deduplicated')).toBe('1');
    expect((await metric('chorus_inserts_total', { table: TABLE, outcome: 'ok' })) - okBefore).toBe(7);
    expect((await metric('chorus_inserts_total', { table: TABLE, outcome: 'deduplicated' })) - dedupBefore).toBe(3);
    expect((await metric('chorus_dedup_hits_total', { table: TABLE })) - hitsBefore).toBe(3);
  });

  it('chorus status --json lists all members alive with equal watermarks once inserts settle', async () => {
    await cluster.waitConverged(TABLE, 'cityHash64(day, id)', 7, 10_000);
    let s = (await status(1)).status;
    for (let i = 0; i < 30 && new Set(s.members.map((m) => m.appliedWatermark)).size !== 1; i++) {
      await sleep(300);
      s = (await status(1)).status;
    }
    expect(s.members.map((m) => m.name)).toEqual(['r1', 'r2', 'r3']);
    expect(s.members.every((m) => m.state === 'alive' && m.ready)).toBe(true);
    expect(new Set(s.members.map((m) => m.appliedWatermark)).size).toBe(1);
    expect(s.members[0]!.appliedWatermark).toBeGreaterThan(0);
    expect(s.healthy).toBe(true);
    const human = await cli(['status', '--grpc', cluster.replica(0).grpc], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/MEMBER\s+STATE\s+APPLIED LSN/);
  });

  it('with one sidecar stopped, status shows it suspect or dead and its lag, and exits 3', async () => {
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'STOP');
    try {
      for (let i = 100; i < 105; i++) expect((await insert(0, i)).status).toBe(200);
      await sleep(2500);
      const { code, status: s } = await status(0);
      const r3 = s.members.find((m) => m.name === 'r3')!;
      expect(['suspect', 'dead']).toContain(r3.state);
      expect(r3.lagEntries).toBeGreaterThanOrEqual(5);
      expect(code).toBe(3);
    } finally {
      await devKill(cluster.info.dir, 'r3', 'sidecar', 'CONT');
    }
  });

  it('lists the services through the gRPC reflection API', async () => {
    const reflectionProto = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '..', 'proto', 'grpc', 'reflection', 'v1alpha', 'reflection.proto');
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, { keepCase: true })) as unknown as {
      grpc: { reflection: { v1alpha: { ServerReflection: grpc.ServiceClientConstructor } } };
    };
    const client = new pkg.grpc.reflection.v1alpha.ServerReflection(cluster.replica(0).grpc, grpcCredentials(cluster.info));
    const services = await new Promise<string[]>((resolve, reject) => {
      const call = (client as unknown as { ServerReflectionInfo: () => grpc.ClientDuplexStream<unknown, { list_services_response?: { service: Array<{ name: string }> } }> }).ServerReflectionInfo();
      call.on('data', (msg) => {
        resolve((msg.list_services_response?.service ?? []).map((s: { name: string }) => s.name));
        call.end();
      });
      call.on('error', reject);
      call.write({ list_services: '' });
    });
    client.close();
    expect(services).toEqual(expect.arrayContaining(['chorus.v1.Admin', 'chorus.v1.Gossip']));
  });

  it('refuses an admin call without the token with UNAUTHENTICATED', async () => {
    const r = await cli(['status', '--grpc', cluster.replica(0).grpc, '--json'], { ...cliEnv(cluster.info), CHORUS_ADMIN_TOKEN: '' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('CHORUS_UNAUTHENTICATED');
    const wrong = await cli(['pause', '--grpc', cluster.replica(0).grpc, '--token', 'not-the-token'], cliEnv(cluster.info));
    expect(wrong.stderr).toContain('CHORUS_UNAUTHENTICATED');
  });

  it('a config with a wrong type or an unknown key fails at start with a message naming the key', async () => {
    const dir = mkdtempSync(join(scratchRoot(), 'config-'));
    const wrongType = join(dir, 'wrong.yaml');
    writeFileSync(wrongType, `replica: rx\ndataDir: ${dir}\nhttp:\n  port: "eighty"\n`);
    const unknownKey = join(dir, 'unknown.yaml');
    writeFileSync(unknownKey, `replica: rx\ndataDir: ${dir}\nzookeeper:\n  conect: 127.0.0.1:1\n`);
    const a = await cli(['serve', '--config', wrongType]);
    expect(a.code).toBe(2);
    expect(a.stderr).toContain('http.port');
    const b = await cli(['serve', '--config', unknownKey]);
    expect(b.code).toBe(2);
    expect(b.stderr).toContain('zookeeper.conect');
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGTERM during a stream of inserts: every acknowledged insert is on every replica, every other reply is coded', async () => {
    let stop = false;
    let nextId = 10_000;
    const acked: number[] = [];
    const refused: string[] = [];
    /** Replies that are not Chorus's: no code, or no word on whether to retry. */
    const uncoded: string[] = [];
    const inFlight = new Set<number>();
    let inFlightAtSignal: number[] = [];
    const outcome = new Map<number, string>();
    const writers = [0, 1, 2, 3].map(async () => {
      while (!stop) {
        const id = nextId++;
        inFlight.add(id);
        try {
          const res = await insert(0, id);
          const text = await res.text();
          if (res.status === 200) {
            acked.push(id);
            outcome.set(id, 'acknowledged');
          } else {
            const code = res.headers.get('x-chorus-error-code');
            if (!code || res.headers.get('x-chorus-retryable') === null) uncoded.push(`HTTP ${res.status} ${JSON.stringify([...res.headers])} ${text.slice(0, 200)}`);
            refused.push(code ?? `HTTP ${res.status}`);
            outcome.set(id, code ?? `HTTP ${res.status}`);
          }
        } catch (err) {
          // No HTTP answer at all: the port closed (refused) or the connection was closed (reset)
          // without a reply; neither is acknowledged, and both are safe to send again.
          const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
          const what = /ECONNREFUSED/.test(cause) ? 'connection refused' : 'connection reset';
          refused.push(what);
          outcome.set(id, `${what} (${cause})`);
          await sleep(20);
        } finally {
          inFlight.delete(id);
        }
      }
    });
    await sleep(500);
    inFlightAtSignal = [...inFlight];
    await devKill(cluster.info.dir, 'r1', 'sidecar', 'TERM');
    await sleep(1500);
    stop = true;
    await Promise.all(writers);
    await devStart(cluster.info.dir, 'r1', 'sidecar');
    console.log(`SIGTERM during inserts: ${acked.length} acknowledged, ${inFlightAtSignal.length} in flight at the signal, refused: ${[...new Set(refused)].join(', ')}`);
    expect(uncoded).toEqual([]);
    expect(acked.length).toBeGreaterThan(0);
    expect(refused.length).toBeGreaterThan(0);
    // In flight when the signal came: finished, or answered with Chorus's code; never cut off.
    for (const id of inFlightAtSignal) expect(outcome.get(id), `insert ${id}`).toMatch(/^(acknowledged|CHORUS_SHUTTING_DOWN)$/);
    // Sent later: refused with the code, or the port was closing (the kernel resets a connection
    // it accepted into the closing listener's backlog before the request was read: no answer,
    // nothing acknowledged).
    for (const r of refused) expect(r).toMatch(/^(CHORUS_SHUTTING_DOWN|connection refused|connection reset)$/);
    const list = acked.join(',');
    for (let i = 0; i < 3; i++) {
      await expect
        .poll(async () => Number((await cluster.clickhouse(i, `SELECT count() FROM ${TABLE} WHERE id IN (${list})`)).trim()), { timeout: 20_000, interval: 200 })
        .toBe(acked.length);
    }
  });
});
