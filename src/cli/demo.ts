import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { existsSync, rmSync } from 'node:fs';
import { ZkSession } from '../allocator/zk.js';
import { silentLogger } from '../core/logger.js';
import { sleep } from '../core/async.js';
import { devDown, devUp, readCluster } from '../dev/cluster.js';
import { isAlive } from '../dev/processes.js';
import { CLICKHOUSE_BACKENDS, isClickHouseBackend, type ClickHouseBackend } from '../dev/clickhouse.js';
import { UsageError } from './admin-commands.js';

async function post(url: string, body: string): Promise<Response> {
  const res = await fetch(url, { method: 'POST', body });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  return res;
}

async function count(url: string): Promise<number> {
  const res = await post(`${url}/?query=${encodeURIComponent('SELECT count() FROM default.demo')}`, '');
  return Number((await res.text()).trim());
}

/** The value of `--clickhouse`, for `chorus demo` and `chorus dev up`. */
export function clickhouseBackendOption(value: string | undefined): ClickHouseBackend {
  if (!isClickHouseBackend(value)) throw new UsageError(`--clickhouse must be one of ${CLICKHOUSE_BACKENDS.join(', ')}`);
  return value;
}

/** `npm start`: a 3-replica shard on loopback, a demo table, inserts through every replica. */
export async function runDemo(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { dir: { type: 'string', default: '.chorus-dev' }, clickhouse: { type: 'string', default: 'server' } } });
  const backend = clickhouseBackendOption(values.clickhouse);
  const dir = resolve(values.dir!);
  if (existsSync(`${dir}/cluster.json`)) {
    const previous = readCluster(dir);
    if (isAlive(previous.zookeeperPid)) await devDown(dir);
  }
  rmSync(dir, { recursive: true, force: true });
  process.stdout.write(`Starting ZooKeeper, 3 ClickHouse (${backend === 'chdb' ? 'ClickHouse 26 from chdb' : 'clickhouse-server'}) and 3 Chorus sidecars under ${dir} ...\n`);
  const info = await devUp({ replicas: 3, dir, clickhouse: backend });
  const stop = async () => {
    process.stdout.write('\nStopping the dev cluster ...\n');
    await devDown(dir);
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());

  // Sent once, through r1: Chorus runs it on every replica and answers once all three have the table.
  const ddl = 'CREATE TABLE IF NOT EXISTS default.demo (day Date, id UInt64, who String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id';
  await post(`${info.replicas[0]!.http}/?query=${encodeURIComponent(ddl)}`, '');
  let id = 0;
  for (let round = 0; round < 10; round++) {
    for (const r of info.replicas) {
      id++;
      await post(`${r.http}/?query=${encodeURIComponent('INSERT INTO default.demo FORMAT JSONEachRow')}`, JSON.stringify({ day: '2026-11-01', id, who: r.name }));
    }
  }
  // Send the first insert again through another replica: it is deduplicated.
  const dup = await post(`${info.replicas[1]!.http}/?query=${encodeURIComponent('INSERT INTO default.demo FORMAT JSONEachRow')}`, JSON.stringify({ day: '2026-11-01', id: 1, who: 'r1' }));
  for (let i = 0; i < 50; i++) {
    const counts = await Promise.all(info.replicas.map((r) => count(r.clickhouse)));
    if (counts.every((c) => c === id)) break;
    await sleep(200);
  }
  const zk = new ZkSession(info.zookeeper, { sessionTimeoutMs: 10_000, timeoutMs: 5000 }, silentLogger());
  zk.start();
  const znodes = await zk.countZnodes('/chorus');
  zk.close();
  process.stdout.write(`\ndefault.demo created once, through r1's Chorus, on all 3 replicas; ${id} inserts sent round-robin through the 3 sidecars; the first one sent again was deduplicated: ${dup.headers.get('x-chorus-deduplicated') === '1'}\n\n`);
  process.stdout.write('replica  rows  chorus (inserts, queries)   clickhouse\n');
  for (const r of info.replicas) process.stdout.write(`${r.name.padEnd(8)} ${String(await count(r.clickhouse)).padEnd(5)} ${r.http.padEnd(27)} ${r.clickhouse}\n`);
  process.stdout.write(`\nZooKeeper ${info.zookeeper}: znodes under /chorus = ${znodes}\n`);
  process.stdout.write(`\nTry: curl '${info.replicas[0]!.http}/?query=SELECT+who,count()+FROM+default.demo+GROUP+BY+who'\n`);
  process.stdout.write('Serving until Ctrl-C.\n');
  // The cluster runs in other processes; this timer is what keeps this one waiting for Ctrl-C.
  setInterval(() => undefined, 1 << 30);
  await new Promise(() => undefined);
}
