/**
 * `npm run bench`: the same workloads against (a) 3 ClickHouse replicas with
 * ReplicatedMergeTree on one ZooKeeper and (b) 3 replicas with MergeTree and Chorus on one
 * ZooKeeper, each on a fresh ZooKeeper, in one invocation, through the project's own dev
 * cluster harness. Writes a Markdown report and, with --json, prints the figures as JSON.
 */
import Database from 'better-sqlite3';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpus, totalmem, tmpdir } from 'node:os';
import { closeSync, fsyncSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ZkSession } from '../../src/allocator/zk.js';
import { silentLogger } from '../../src/core/logger.js';
import { sleep } from '../../src/core/async.js';
import { devDown, devUp, scratchRoot, type ClusterInfo } from '../../src/dev/cluster.js';
import { mntr } from '../../src/dev/zookeeper.js';
import type { LogEntry } from '../../src/log/entry.js';
import { fetchPart } from '../../src/parts/fetch.js';
import { PartStore } from '../../src/parts/store.js';
import { renderReport } from './report.js';
import { cpuByType, type ProcessType } from './cpu.js';
import { interserverClient } from '../support/cluster.js';

export type SystemName = 'rmt' | 'chorus';

export interface Stats {
  p50: number;
  p99: number;
  max: number;
  samples: number;
}

export interface InsertRun {
  inserts: number;
  rows: number;
  seconds: number;
  insertsPerSec: number;
  rowsPerSec: number;
  zkRequests: number;
  zkRequestsPerInsert: number;
  /** From the last acknowledgement until every replica held every row. */
  convergeMs: number;
  /** CPU milliseconds per insert from the first send until every replica held every row, by process kind (/proc). */
  cpuMsPerInsert?: { sidecar: number; clickhouse: number; zookeeper: number; total: number };
}

/** Inserts/s of the repetitions of one W1 run: the run reported is the median one. */
export interface Spread {
  runs: number[];
  median: number;
  min: number;
  max: number;
}

export interface SystemResult {
  system: SystemName;
  w1: Record<'c1' | 'c8' | 'c32', InsertRun>;
  w1Spread: Record<'c1' | 'c8' | 'c32', Spread>;
  /**
   * Bytes ZooKeeper received (mntr's zk_bytes_received_count, pings and reads included) per
   * sequential one-row insert, after `filledWith` inserts filled the dedup window.
   */
  zkBytes: { inserts: number; filledWith: number; bytesPerInsert: number };
  lagMs: Stats;
  w2: InsertRun & { plainRowsPerSec: number; overheadVsPlain: number };
  w3: InsertRun & { tables: number; znodesTotal: number; znodesPerTable: number; znodesOwned: number };
  w4: { seconds: number; zkRequestsPerSec: number };
  znodes: { total: number; owned: number };
  rssMb: { sidecarMax: number | null; clickhouseMax: number };
  transfer: { mbPerSec: number; cpMbPerSec: number; cpFsyncMbPerSec: number; bytes: number } | null;
}

export interface BenchResult {
  startedAt: string;
  quick: boolean;
  machine: { cpus: number; cpuModel: string; memoryGb: number; node: string; clickhouse: string; zookeeper: string; kernel: string };
  systems: Record<SystemName, SystemResult>;
}

interface Sizes {
  w1: Record<'c1' | 'c8' | 'c32', number>;
  w1Repetitions: number;
  zkBytesFill: number;
  zkBytesInserts: number;
  lagSamples: number;
  w2Inserts: number;
  w2Rows: number;
  w3Inserts: number;
  w3Tables: number;
  idleSeconds: number;
}

const FULL: Sizes = { w1: { c1: 300, c8: 600, c32: 600 }, w1Repetitions: 3, zkBytesFill: 1100, zkBytesInserts: 300, lagSamples: 100, w2Inserts: 10, w2Rows: 100_000, w3Inserts: 1000, w3Tables: 20, idleSeconds: 60 };
const QUICK: Sizes = { w1: { c1: 20, c8: 40, c32: 64 }, w1Repetitions: 1, zkBytesFill: 20, zkBytesInserts: 20, lagSamples: 10, w2Inserts: 2, w2Rows: 100_000, w3Inserts: 100, w3Tables: 20, idleSeconds: 5 };

/** A deterministic pseudo-random sequence, so both systems get the very same rows. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * `count` rows in one month (one partition, so one part per insert). Small inserts rotate over
 * six months: hundreds of single-part inserts into one partition would trip ClickHouse's
 * "too many parts" guard (300) on ReplicatedMergeTree before merges catch up.
 */
export function tsvRows(firstId: number, count: number, month = 11): string {
  let out = '';
  const prefix = `2026-${String(month).padStart(2, '0')}-`;
  for (let i = 0; i < count; i++) {
    const id = firstId + i;
    out += `${prefix}${String(1 + (id % 28)).padStart(2, '0')}\t${id}\tpayload-${id}-${(id * 2654435761) % 1_000_000}\n`;
  }
  return out;
}

export function stats(values: number[]): Stats {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0, samples: sorted.length };
}

export async function runConcurrently<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export class System {
  private nextId = 1;
  /** Inserts answered 503 with Retry-After (backpressure) and sent again, as a client would. */
  retriedAfter503 = 0;
  constructor(
    readonly name: SystemName,
    readonly cluster: ClusterInfo,
  ) {}

  /** Where clients send inserts: ClickHouse itself for RMT, the sidecar for Chorus. */
  endpoint(replica: number): string {
    const r = this.cluster.replicas[replica]!;
    return this.name === 'rmt' ? r.clickhouse : r.http;
  }

  async sql(replica: number, query: string, body = ''): Promise<string> {
    const res = await fetch(`${this.cluster.replicas[replica]!.clickhouse}/?query=${encodeURIComponent(query)}`, { method: 'POST', body });
    const text = await res.text();
    if (!res.ok) throw new Error(`${this.name} r${replica + 1}: ${text}`);
    return text;
  }

  async createTable(table: string): Promise<void> {
    const engine =
      this.name === 'rmt' ? `ReplicatedMergeTree('/clickhouse/tables/{shard}/${table}', '{replica}')` : 'MergeTree';
    for (let i = 0; i < this.cluster.replicas.length; i++) {
      await this.sql(i, `CREATE TABLE default.${table} (day Date, id UInt64, payload String) ENGINE = ${engine} PARTITION BY toYYYYMM(day) ORDER BY id`);
    }
  }

  async insert(replica: number, table: string, body: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const res = await fetch(`${this.endpoint(replica)}/?query=${encodeURIComponent(`INSERT INTO default.${table} FORMAT TabSeparated`)}`, { method: 'POST', body });
      const text = await res.text();
      if (res.status === 200) return;
      // Backpressure: a client is told when to come back; the wait counts in the insert's time.
      const retryAfter = Number(res.headers.get('retry-after'));
      if (res.status === 503 && retryAfter > 0 && attempt < 20) {
        this.retriedAfter503++;
        await sleep(retryAfter * 1000);
        continue;
      }
      throw new Error(`${this.name} insert via r${replica + 1}: ${res.status} ${text}`);
    }
  }

  ids(count: number): number {
    const first = this.nextId;
    this.nextId += count;
    return first;
  }

  async counts(table: string): Promise<number[]> {
    return Promise.all(this.cluster.replicas.map(async (_, i) => Number((await this.sql(i, `SELECT count() FROM default.${table}`)).trim())));
  }

  async waitConverged(tables: string[], expected: Record<string, number>, timeoutMs = 300_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let done = true;
      for (const t of tables) if (!(await this.counts(t)).every((c) => c === expected[t])) done = false;
      if (done) return;
      if (Date.now() > deadline) throw new Error(`${this.name}: replicas did not converge on ${tables.join(', ')}`);
      await sleep(50);
    }
  }

  async zkPackets(): Promise<number> {
    return Number((await mntr(this.cluster.zookeeperPort)).zk_packets_received);
  }

  async zkBytesReceived(): Promise<number> {
    return Number((await mntr(this.cluster.zookeeperPort)).zk_bytes_received_count);
  }

  async znodeCount(): Promise<number> {
    return Number((await mntr(this.cluster.zookeeperPort)).zk_znode_count);
  }

  /** Znodes under a path, counted with a session that is closed again at once. */
  async znodesUnder(path: string): Promise<number> {
    const zk = new ZkSession(this.cluster.zookeeper, { sessionTimeoutMs: 10_000, timeoutMs: 10_000 }, silentLogger());
    zk.start();
    try {
      return await zk.countZnodes(path);
    } finally {
      zk.close();
    }
  }
}

/** Runs `plan` inserts (replica, table, rows) at a concurrency and measures it, convergence included. */
async function insertRun(sys: System, plan: Array<{ replica: number; table: string; rows: number }>, concurrency: number): Promise<InsertRun> {
  const bodies = plan.map((p, i) => tsvRows(sys.ids(p.rows), p.rows, 6 + (i % 6)));
  const expected: Record<string, number> = {};
  for (const t of new Set(plan.map((p) => p.table))) expected[t] = (await sys.counts(t))[0]!;
  for (const p of plan) expected[p.table]! += p.rows;
  await sleep(200);
  const packetsBefore = await sys.zkPackets();
  const cpuBefore = cpuByType(sys.cluster);
  const started = performance.now();
  await runConcurrently(
    plan.map((p, i) => ({ ...p, body: bodies[i]! })),
    concurrency,
    (p) => sys.insert(p.replica, p.table, p.body),
  );
  const acked = performance.now();
  const packetsAfter = await sys.zkPackets();
  await sys.waitConverged(Object.keys(expected), expected);
  const converged = performance.now();
  const cpuAfter = cpuByType(sys.cluster);
  const cpuMs = (kind: ProcessType) => ((cpuAfter[kind] - cpuBefore[kind]) * 1000) / plan.length;
  const cpuMsPerInsert = { sidecar: cpuMs('sidecar'), clickhouse: cpuMs('clickhouse-server'), zookeeper: cpuMs('zookeeper'), total: 0 };
  cpuMsPerInsert.total = cpuMsPerInsert.sidecar + cpuMsPerInsert.clickhouse + cpuMsPerInsert.zookeeper;
  const seconds = (acked - started) / 1000;
  const rows = plan.reduce((s, p) => s + p.rows, 0);
  return {
    inserts: plan.length,
    rows,
    seconds,
    insertsPerSec: plan.length / seconds,
    rowsPerSec: rows / seconds,
    zkRequests: packetsAfter - packetsBefore,
    zkRequestsPerInsert: (packetsAfter - packetsBefore) / plan.length,
    convergeMs: converged - acked,
    cpuMsPerInsert,
  };
}

/**
 * ZooKeeper bytes per insert with a full dedup window: `fill` inserts at concurrency 8 first,
 * then `inserts` sequential one-row inserts measured.
 */
async function measureZkBytes(sys: System, fill: number, inserts: number): Promise<SystemResult['zkBytes']> {
  await sys.createTable('zkbytes');
  await runConcurrently(Array.from({ length: fill }, (_, i) => i), 8, (i) => sys.insert(i % 3, 'zkbytes', tsvRows(sys.ids(1), 1)));
  await sleep(500);
  const before = await sys.zkBytesReceived();
  for (let i = 0; i < inserts; i++) await sys.insert(i % 3, 'zkbytes', tsvRows(sys.ids(1), 1));
  const after = await sys.zkBytesReceived();
  return { inserts, filledWith: fill, bytesPerInsert: (after - before) / inserts };
}

/** Acknowledgement to visibility on each other replica, polled every 2 ms, sequential inserts. */
async function measureLag(sys: System, samples: number): Promise<Stats> {
  await sys.createTable('lag');
  const lags: number[] = [];
  for (let n = 0; n < samples; n++) {
    const replica = n % 3;
    const id = sys.ids(1);
    await sys.insert(replica, 'lag', tsvRows(id, 1));
    const acked = performance.now();
    await Promise.all(
      [0, 1, 2]
        .filter((i) => i !== replica)
        .map(async (i) => {
          for (;;) {
            if ((await sys.sql(i, `SELECT count() FROM default.lag WHERE id = ${id}`)).trim() === '1') {
              lags.push(performance.now() - acked);
              return;
            }
            if (performance.now() - acked > 60_000) throw new Error(`${sys.name}: row ${id} not visible on r${i + 1} after 60 s`);
            await sleep(2);
          }
        }),
    );
  }
  return stats(lags);
}

/**
 * W2: large inserts, timed from send to acknowledgement, one at a time. Between two inserts
 * replication is let settle (not timed), and the same volume is sent to a plain MergeTree
 * table on one server (no replication), timed the same way: on two cores shared by three
 * replicas, that is what compares the insert path with a plain insert rather than with three
 * servers' worth of work.
 */
async function measureLargeInserts(sys: System, sizes: Sizes): Promise<SystemResult['w2']> {
  await sys.createTable('w2');
  await sys.sql(0, 'CREATE TABLE default.w2_plain (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id');
  let replicatedMs = 0;
  let plainMs = 0;
  let expected = 0;
  const packetsBefore = await sys.zkPackets();
  const started = performance.now();
  for (let k = 0; k < sizes.w2Inserts; k++) {
    const body = tsvRows(sys.ids(sizes.w2Rows), sizes.w2Rows);
    const plainBody = tsvRows(sys.ids(sizes.w2Rows), sizes.w2Rows);
    let t = performance.now();
    await sys.insert(k % 3, 'w2', body);
    replicatedMs += performance.now() - t;
    expected += sizes.w2Rows;
    await sys.waitConverged(['w2'], { w2: expected });
    t = performance.now();
    await sys.sql(0, 'INSERT INTO default.w2_plain FORMAT TabSeparated', plainBody);
    plainMs += performance.now() - t;
  }
  const packets = (await sys.zkPackets()) - packetsBefore;
  const rows = sizes.w2Inserts * sizes.w2Rows;
  const rowsPerSec = rows / (replicatedMs / 1000);
  const plainRowsPerSec = rows / (plainMs / 1000);
  return {
    inserts: sizes.w2Inserts,
    rows,
    seconds: replicatedMs / 1000,
    insertsPerSec: sizes.w2Inserts / (replicatedMs / 1000),
    rowsPerSec,
    zkRequests: packets,
    zkRequestsPerInsert: packets / sizes.w2Inserts,
    convergeMs: (performance.now() - started) / sizes.w2Inserts,
    plainRowsPerSec,
    overheadVsPlain: 1 - rowsPerSec / plainRowsPerSec,
  };
}

function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  fsyncSync(fd);
  closeSync(fd);
}

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((sum, f) => sum + statSync(join(dir, f)).size, 0);
}

/** Chorus's part transfer (download, verify, fsync, rename) of the largest stored part, next to cp of its files. */
async function measureTransfer(cluster: ClusterInfo): Promise<SystemResult['transfer']> {
  const r1 = cluster.replicas[0]!;
  const partsDir = join(r1.dir, 'chorus', 'parts');
  const largest = readdirSync(partsDir)
    .map((name) => ({ lsn: Number(name), bytes: dirBytes(join(partsDir, name)) }))
    .sort((a, b) => b.bytes - a.bytes)[0];
  if (!largest) return null;
  const db = new Database(join(r1.dir, 'chorus', 'log.sqlite'), { readonly: true });
  const row = db.prepare('SELECT body FROM entries WHERE lsn = ?').get(largest.lsn) as { body: string };
  db.close();
  const entry = JSON.parse(row.body) as LogEntry;
  const scratch = mkdtempSync(join(r1.dir, 'transfer-'));
  try {
    const source = interserverClient(cluster, r1.name);
    const fetchTimes: number[] = [];
    const cpTimes: number[] = [];
    const cpSyncTimes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const store = new PartStore(join(scratch, `fetch-${i}`));
      await store.init();
      const t0 = performance.now();
      await fetchPart(store, entry, source, 60_000);
      fetchTimes.push(performance.now() - t0);
      const t1 = performance.now();
      const cp = spawnSync('cp', ['-r', join(partsDir, String(largest.lsn)), join(scratch, `cp-${i}`)]);
      cpTimes.push(performance.now() - t1);
      if (cp.status !== 0) throw new Error(`cp failed: ${cp.stderr.toString()}`);
      // The same copy made as durable as Chorus's fetch makes it: every file and the dir fsynced.
      const t2 = performance.now();
      const target = join(scratch, `cpsync-${i}`);
      spawnSync('cp', ['-r', join(partsDir, String(largest.lsn)), target]);
      for (const f of readdirSync(target)) fsyncPath(join(target, f));
      fsyncPath(target);
      cpSyncTimes.push(performance.now() - t2);
    }
    const mbps = (ms: number) => largest.bytes / 1024 / 1024 / (ms / 1000);
    return {
      bytes: largest.bytes,
      mbPerSec: mbps(stats(fetchTimes).p50),
      cpMbPerSec: mbps(stats(cpTimes).p50),
      cpFsyncMbPerSec: mbps(stats(cpSyncTimes).p50),
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function benchSystem(name: SystemName, sizes: Sizes, log: (msg: string) => void): Promise<SystemResult> {
  const dir = mkdtempSync(join(scratchRoot(), `bench-${name}-`));
  const cluster = await devUp({ replicas: 3, dir, clickhouseZookeeper: name === 'rmt', withoutSidecars: name === 'rmt' });
  const sys = new System(name, cluster);
  try {
    const random = rng(42);
    const smallPlan = (table: string, n: number) =>
      Array.from({ length: n }, (_, i) => ({ replica: i % 3, table, rows: 1 + Math.floor(random() * 100) }));

    // Every repetition gets the same plan (rows per insert, replica), on a table of its own.
    const plans = Object.fromEntries(([1, 8, 32] as const).map((c) => [c, smallPlan('', sizes.w1[`c${c}`])])) as Record<1 | 8 | 32, ReturnType<typeof smallPlan>>;
    const runs: Record<'c1' | 'c8' | 'c32', InsertRun[]> = { c1: [], c8: [], c32: [] };
    for (let rep = 1; rep <= sizes.w1Repetitions; rep++) {
      for (const c of [1, 8, 32] as const) {
        const key = `c${c}` as const;
        const table = `w1_${key}_${rep}`;
        await sys.createTable(table);
        const run = await insertRun(sys, plans[c].map((p) => ({ ...p, table })), c);
        runs[key].push(run);
        log(`${name} W1 c=${c} #${rep}: ${run.insertsPerSec.toFixed(1)} inserts/s, ${run.zkRequestsPerInsert.toFixed(3)} ZK req/insert, ${run.cpuMsPerInsert!.total.toFixed(1)} ms CPU/insert`);
      }
    }
    const w1 = {} as SystemResult['w1'];
    const w1Spread = {} as SystemResult['w1Spread'];
    for (const key of ['c1', 'c8', 'c32'] as const) {
      const sorted = [...runs[key]].sort((a, b) => a.insertsPerSec - b.insertsPerSec);
      w1[key] = sorted[Math.floor((sorted.length - 1) / 2)]!;
      w1Spread[key] = { runs: runs[key].map((r) => r.insertsPerSec), median: w1[key].insertsPerSec, min: sorted[0]!.insertsPerSec, max: sorted.at(-1)!.insertsPerSec };
    }

    const lagMs = await measureLag(sys, sizes.lagSamples);
    log(`${name} lag: p50 ${lagMs.p50.toFixed(1)} ms, p99 ${lagMs.p99.toFixed(1)} ms`);

    const w2 = await measureLargeInserts(sys, sizes);
    log(`${name} W2: ${w2.rowsPerSec.toFixed(0)} rows/s (plain ${w2.plainRowsPerSec.toFixed(0)})`);
    // Right after W2, while its large parts are still in the part store (GC removes copies
    // everyone has applied once partStore.minRetentionMs has passed).
    const transfer = name === 'chorus' ? await measureTransfer(cluster) : null;

    const tables = Array.from({ length: sizes.w3Tables }, (_, i) => `w3_${i}`);
    for (const t of tables) await sys.createTable(t);
    const w3Plan = Array.from({ length: sizes.w3Inserts }, (_, i) => ({ replica: i % 3, table: tables[i % tables.length]!, rows: 1 + Math.floor(random() * 100) }));
    const w3Run = await insertRun(sys, w3Plan, 4);
    await sleep(1000);
    const znodesTotal = await sys.znodeCount();
    const owned = name === 'rmt' ? await sys.znodesUnder('/clickhouse') : await sys.znodesUnder('/chorus');
    const perTable = name === 'rmt' ? (await Promise.all(tables.map((t) => sys.znodesUnder(`/clickhouse/tables/${cluster.shard}/${t}`)))).reduce((a, b) => a + b) / tables.length : 0;
    const w3 = { ...w3Run, tables: tables.length, znodesTotal, znodesPerTable: perTable, znodesOwned: owned };
    log(`${name} W3: ${znodesTotal} znodes in all, ${owned} owned, ${w3.zkRequestsPerInsert.toFixed(2)} req/insert`);

    await sleep(2000);
    const idleBefore = await sys.zkPackets();
    const idleStart = performance.now();
    await sleep(sizes.idleSeconds * 1000);
    const idleSeconds = (performance.now() - idleStart) / 1000;
    const w4 = { seconds: idleSeconds, zkRequestsPerSec: ((await sys.zkPackets()) - idleBefore) / idleSeconds };
    log(`${name} W4 idle: ${w4.zkRequestsPerSec.toFixed(2)} ZK requests/s`);
    log(`${name}: ${sys.retriedAfter503} inserts answered 503 with Retry-After (backpressure) over all workloads, sent again after the wait`);

    const rss = {
      sidecarMax: name === 'chorus' ? Math.max(...cluster.replicas.map((r) => rssMb(r.pids.sidecar))) : null,
      clickhouseMax: Math.max(...cluster.replicas.map((r) => rssMb(r.pids.clickhouse))),
    };
    const zkBytes = await measureZkBytes(sys, sizes.zkBytesFill, sizes.zkBytesInserts);
    log(`${name} ZooKeeper bytes per insert (window filled with ${zkBytes.filledWith}): ${zkBytes.bytesPerInsert.toFixed(0)}`);
    return { system: name, w1, w1Spread, zkBytes, lagMs, w2, w3, w4, znodes: { total: await sys.znodeCount(), owned }, rssMb: rss, transfer };
  } finally {
    await devDown(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

function machine(): BenchResult['machine'] {
  const version = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return 'unknown';
    }
  };
  const zk = version('dpkg-query', ['-W', '-f=${Version}', 'zookeeper']);
  const ch = version('dpkg-query', ['-W', '-f=${Version}', 'clickhouse-server']);
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGb: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    clickhouse: ch,
    zookeeper: zk,
    kernel: version('uname', ['-r']),
  };
}

export async function runBench(opts: { quick: boolean; log?: (msg: string) => void }): Promise<BenchResult> {
  const sizes = opts.quick ? QUICK : FULL;
  const log = opts.log ?? (() => undefined);
  const startedAt = new Date().toISOString();
  const rmt = await benchSystem('rmt', sizes, log);
  const chorus = await benchSystem('chorus', sizes, log);
  return { startedAt, quick: opts.quick, machine: machine(), systems: { rmt, chorus } };
}

export const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url));

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { quick: { type: 'boolean', default: false }, json: { type: 'boolean', default: false }, out: { type: 'string' } },
  });
  const result = await runBench({ quick: values.quick!, log: (m) => process.stderr.write(`bench: ${m}\n`) });
  // A quick run never replaces the committed report unless asked to.
  const out = values.out ?? (values.quick ? join(tmpdir(), 'chorus-bench-REPORT.md') : join(BENCH_DIR, 'REPORT.md'));
  writeFileSync(resolve(out), renderReport(result));
  process.stderr.write(`bench: report written to ${out}\n`);
  if (values.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
