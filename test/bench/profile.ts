/**
 * Where one insert's time and CPU go. Runs W1-like load (small inserts of 1-100 rows,
 * round-robin over 3 replicas) against a dev cluster of Chorus and one of ReplicatedMergeTree
 * and prints, as Markdown:
 *  - per step of the insert, origin and followers: count per insert, mean and p99 wall time,
 *    ClickHouse queries per insert (from the sidecars' chorus_insert_step_seconds and
 *    chorus_clickhouse_queries_total, differenced over the run);
 *  - ClickHouse's own view: queries per insert by kind, their duration and CPU (system.query_log);
 *  - CPU seconds per insert by process type (sidecars, clickhouse-server, ZooKeeper, this load
 *    generator), from /proc utime+stime over the run, for both systems;
 *  - with --cpu-prof: the sidecars' self time by function and by area, over the run only.
 *
 *   npx tsx test/bench/profile.ts [--inserts 600] [--concurrency 8] [--warmup 60] [--cpu-prof [--cpu-prof-interval µs]] [--systems chorus,rmt]
 *   npx tsx test/bench/profile.ts --rows 100000 --inserts 12 --warmup 3   # W2-like: large inserts one at a time
 *
 * Sidecars run dist/: `npm run build` first. Timings on a shared 2-core box are noisy; counts
 * and ratios are what to read.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';
import { sleep } from '../../src/core/async.js';
import { devDown, devUp, scratchRoot, type ClusterInfo } from '../../src/dev/cluster.js';
import { System, rng, runConcurrently, stats, tsvRows, type SystemName } from './bench.js';
import { CLK_TCK, cpuByType, type ProcessType } from './cpu.js';

interface Options {
  inserts: number;
  concurrency: number;
  warmup: number;
  cpuProf: boolean;
  cpuProfIntervalUs: number;
  systems: SystemName[];
  /** W2-like when set: inserts of this many rows, one at a time, replication settled after each, a plain insert timed alongside. */
  rows?: number;
}

/**
 * The sidecars' main threads (tid = pid), from /proc/PID/task/PID/schedstat: seconds on a CPU and
 * seconds runnable but waiting for one. The rest of the wall time it was either idle in the event
 * loop or blocked in a synchronous system call (the CPU profile tells those two apart).
 */
function mainThreads(cluster: ClusterInfo): { onCpu: number; runqueue: number } {
  let onCpu = 0;
  let runqueue = 0;
  for (const r of cluster.replicas) {
    try {
      const [run, wait] = readFileSync(`/proc/${r.pids.sidecar}/task/${r.pids.sidecar}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
      onCpu += run! / 1e9;
      runqueue += wait! / 1e9;
    } catch {
      // no sidecar (RMT), or schedstat not available
    }
  }
  return { onCpu, runqueue };
}

// ---------------------------------------------------------------------------------------------
// Prometheus text: the step histogram and the query counter, summed over the sidecars

interface StepSeries {
  sum: number;
  count: number;
  buckets: Map<number, number>;
}

type MetricsSnapshot = { steps: Map<string, StepSeries>; queries: Map<string, number> };

function parseLabels(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) out[m[1]!] = m[2]!;
  return out;
}

function parseMetrics(texts: string[]): MetricsSnapshot {
  const steps = new Map<string, StepSeries>();
  const queries = new Map<string, number>();
  const series = (key: string) => {
    let s = steps.get(key);
    if (!s) steps.set(key, (s = { sum: 0, count: 0, buckets: new Map() }));
    return s;
  };
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const m = /^(chorus_insert_step_seconds_(?:sum|count|bucket)|chorus_clickhouse_queries_total)\{([^}]*)\} (\S+)$/.exec(line);
      if (!m) continue;
      const labels = parseLabels(m[2]!);
      const key = `${labels.role}\t${labels.step}`;
      const value = Number(m[3]);
      if (m[1] === 'chorus_clickhouse_queries_total') queries.set(key, (queries.get(key) ?? 0) + value);
      else if (m[1] === 'chorus_insert_step_seconds_sum') series(key).sum += value;
      else if (m[1] === 'chorus_insert_step_seconds_count') series(key).count += value;
      else {
        const le = labels.le === '+Inf' ? Infinity : Number(labels.le);
        const s = series(key);
        s.buckets.set(le, (s.buckets.get(le) ?? 0) + value);
      }
    }
  }
  return { steps, queries };
}

async function scrape(cluster: ClusterInfo): Promise<MetricsSnapshot> {
  return parseMetrics(await Promise.all(cluster.replicas.map(async (r) => (await fetch(`${r.http}/metrics`)).text())));
}

function diffMetrics(before: MetricsSnapshot, after: MetricsSnapshot): MetricsSnapshot {
  const steps = new Map<string, StepSeries>();
  for (const [key, a] of after.steps) {
    const b = before.steps.get(key);
    const buckets = new Map<number, number>();
    for (const [le, v] of a.buckets) buckets.set(le, v - (b?.buckets.get(le) ?? 0));
    steps.set(key, { sum: a.sum - (b?.sum ?? 0), count: a.count - (b?.count ?? 0), buckets });
  }
  const queries = new Map<string, number>();
  for (const [key, v] of after.queries) queries.set(key, v - (before.queries.get(key) ?? 0));
  return { steps, queries };
}

/** The q-quantile of a cumulative histogram, interpolated inside its bucket (as histogram_quantile does). */
function bucketQuantile(s: StepSeries, q: number): number {
  const les = [...s.buckets.keys()].sort((a, b) => a - b);
  const rank = q * s.count;
  let prevLe = 0;
  let prevCount = 0;
  for (const le of les) {
    const c = s.buckets.get(le)!;
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1e-9, c - prevCount);
    }
    prevLe = le;
    prevCount = c;
  }
  return prevLe;
}

// ---------------------------------------------------------------------------------------------
// system.query_log

interface QueryKind {
  kind: string;
  count: number;
  durationMs: number;
  userUs: number;
  systemUs: number;
  realUs: number;
}

/** A name for the kind of a query, from its text. */
function queryKind(query: string, system: SystemName): string {
  const q = query.replace(/\s+/g, ' ').trim();
  const rules: Array<[RegExp, string]> = [
    [/^INSERT INTO `?_chorus`?\./i, 'INSERT into staging table'],
    // Through Chorus, clients never reach ClickHouse: an INSERT into the target is the sidecar's
    // grant probe (empty, as the client's user; cached for http.grantCacheMs).
    [/^INSERT INTO `?default`?\.`?w1\b/i, system === 'chorus' ? 'INSERT into target, empty (grant probe)' : 'INSERT into target table (client)'],
    [/ATTACH PART/i, 'ALTER TABLE ... ATTACH PART'],
    [/^TRUNCATE TABLE `?_chorus/i, 'TRUNCATE staging table'],
    [/DROP PARTITION/i, 'ALTER TABLE ... DROP PARTITION'],
    [/^SELECT max\(max_block_number\)/i, 'SELECT max block (system.parts)'],
    [/^SELECT path, min_block_number AS block FROM system\.parts/i, 'SELECT find by content (system.parts)'],
    [/^SELECT path FROM system\.parts/i, 'SELECT part directory (system.parts)'],
    [/FROM system\.parts/i, 'SELECT other (system.parts)'],
    [/FROM system\.tables/i, 'SELECT (system.tables)'],
    [/^SELECT (1|version\(\))/i, 'SELECT 1 / version() (ping)'],
    [/^(CREATE|SYSTEM STOP MERGES)/i, 'CREATE / SYSTEM STOP MERGES'],
  ];
  for (const [re, kind] of rules) if (re.test(q)) return kind;
  return q.slice(0, 60);
}

async function queryLog(sys: System, fromSec: number, toSec: number): Promise<{ kinds: QueryKind[]; hasCpu: boolean }> {
  const byKind = new Map<string, QueryKind>();
  let hasCpu = false;
  for (let i = 0; i < sys.cluster.replicas.length; i++) {
    await sys.sql(i, 'SYSTEM FLUSH LOGS');
    const text = await sys.sql(
      i,
      `SELECT query, query_duration_ms AS ms,
         ProfileEvents.Values[indexOf(ProfileEvents.Names, 'UserTimeMicroseconds')] AS user_us,
         ProfileEvents.Values[indexOf(ProfileEvents.Names, 'SystemTimeMicroseconds')] AS system_us,
         ProfileEvents.Values[indexOf(ProfileEvents.Names, 'RealTimeMicroseconds')] AS real_us,
         has(ProfileEvents.Names, 'UserTimeMicroseconds') AS has_cpu
       FROM system.query_log
       WHERE type = 2 AND toUnixTimestamp(event_time) BETWEEN ${Math.floor(fromSec)} AND ${Math.ceil(toSec)}
         AND query NOT LIKE 'SELECT count() FROM default.%' AND query NOT LIKE '%system.query_log%' AND query NOT LIKE 'SYSTEM FLUSH LOGS%'
       FORMAT JSONEachRow`,
    );
    for (const line of text.split('\n').filter(Boolean)) {
      const r = JSON.parse(line) as { query: string; ms: string | number; user_us: string | number; system_us: string | number; real_us: string | number; has_cpu: number };
      const kind = queryKind(r.query, sys.name);
      const k = byKind.get(kind) ?? { kind, count: 0, durationMs: 0, userUs: 0, systemUs: 0, realUs: 0 };
      k.count++;
      k.durationMs += Number(r.ms);
      k.userUs += Number(r.user_us);
      k.systemUs += Number(r.system_us);
      k.realUs += Number(r.real_us);
      if (Number(r.has_cpu)) hasCpu = true;
      byKind.set(kind, k);
    }
  }
  return { kinds: [...byKind.values()].sort((a, b) => b.count - a.count), hasCpu };
}

// ---------------------------------------------------------------------------------------------
// .cpuprofile: self time by function and by area, samples within the run's window only

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const AREAS: Array<[RegExp, string]> = [
  [/@grpc|protobufjs|proto-loader|long\/|lodash\.camelcase/, 'grpc (gossip, allocation RPCs)'],
  [/better-sqlite3/, 'sqlite (better-sqlite3)'],
  [/fastify|find-my-way|avvio|light-my-request|@fastify|fast-json-stringify|fast-querystring|toad-cache|abstract-logging|secure-json-parse/, 'fastify'],
  [/pino|sonic-boom|thread-stream|fast-redact|quick-format|on-exit-leak/, 'pino (logging)'],
  [/prom-client|tdigest|bintrees/, 'prom-client (metrics)'],
  [/zod/, 'zod (validation)'],
  [/node-zookeeper-client|jute/, 'zookeeper client'],
  [/yaml/, 'yaml'],
  [/node:internal\/crypto|node:crypto/, 'crypto (sha256)'],
  [/node:internal\/fs|node:fs|node:internal\/url|node:path/, 'fs / path'],
  [/_http_|node:http|node:https|node:internal\/http/, 'node http'],
  [/node:net|node:internal\/net|node:tls|node:_tls|node:internal\/stream_base|node:dns|node:internal\/dns/, 'net / tls sockets'],
  [/node:internal\/streams|node:stream|node:events|node:internal\/event_target/, 'streams / events'],
  [/node:internal\/(process\/task_queues|timers|async_hooks|promise)|node:timers/, 'timers / microtasks'],
  [/\/dist\/([a-z]+)\//, 'chorus'],
  [/^node:/, 'node (other)'],
];

function areaOf(frame: ProfileNode['callFrame']): string | undefined {
  const { url, functionName } = frame;
  if (functionName === '(garbage collector)') return 'GC';
  if (functionName === '(program)') return '(program: V8/native outside JS)';
  if (functionName === '(idle)') return '(idle)';
  if (url === '') return functionName === 'parse' || functionName === 'stringify' ? 'JSON' : undefined;
  for (const [re, area] of AREAS) {
    const m = re.exec(url);
    if (m) return area === 'chorus' ? `chorus: ${m[1]}` : area;
  }
  return url.includes('node_modules') ? `other modules (${/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1]})` : 'other';
}

interface ProfileSummary {
  files: number;
  windowMs: number;
  busyMs: number;
  byFunction: Array<{ name: string; ms: number }>;
  byArea: Array<{ name: string; ms: number }>;
}

function summariseProfiles(dir: string, fromUs: number, toUs: number): ProfileSummary | undefined {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'));
  } catch {
    return undefined;
  }
  const byFunction = new Map<string, number>();
  const byArea = new Map<string, number>();
  let busyMs = 0;
  let windowMs = 0;
  for (const name of names) {
    const p = JSON.parse(readFileSync(join(dir, name), 'utf8')) as CpuProfile;
    const nodes = new Map(p.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    // A native frame (no url: a builtin, a C++ binding) counts in the area of the JS that called it.
    const areaCache = new Map<number, string>();
    const nodeArea = (id: number): string => {
      const cached = areaCache.get(id);
      if (cached) return cached;
      const n = nodes.get(id)!;
      const own = areaOf(n.callFrame);
      const parentId = parent.get(id);
      const area = own ?? (parentId !== undefined ? nodeArea(parentId) : 'native (root)');
      areaCache.set(id, area);
      return area;
    };
    let t = p.startTime;
    for (let i = 0; i < p.samples.length; i++) {
      t += p.timeDeltas[i]!;
      if (t < fromUs || t > toUs) continue;
      // A sample stands for the interval up to the next one.
      const ms = (p.timeDeltas[i + 1] ?? 0) / 1000;
      const n = nodes.get(p.samples[i]!)!;
      const area = nodeArea(n.id);
      windowMs += ms;
      if (area === '(idle)') continue;
      busyMs += ms;
      const where = (c: ProfileNode['callFrame']) => `${c.functionName || '(anonymous)'} ${c.url.replace(/^.*\/(node_modules|dist)\//, '$1/').replace(/^file:\/\//, '')}:${c.lineNumber + 1}`;
      // A native frame is named with the first frame of the application or a module above it
      // (node's own wrappers skipped): `open` alone says little.
      let caller = parent.get(n.id);
      while (caller !== undefined && !/\/(dist|node_modules)\//.test(nodes.get(caller)!.callFrame.url)) caller = parent.get(caller);
      const f = n.callFrame;
      const fname = f.url ? where(f) : `${f.functionName} [native${caller !== undefined ? ` <- ${where(nodes.get(caller)!.callFrame)}` : ''}]`;
      byFunction.set(fname, (byFunction.get(fname) ?? 0) + ms);
      byArea.set(area, (byArea.get(area) ?? 0) + ms);
    }
  }
  const sorted = (m: Map<string, number>) => [...m].map(([name, ms]) => ({ name, ms })).sort((a, b) => b.ms - a.ms);
  return { files: names.length, windowMs, busyMs, byFunction: sorted(byFunction), byArea: sorted(byArea) };
}

// ---------------------------------------------------------------------------------------------
// One system

interface SystemProfile {
  system: SystemName;
  inserts: number;
  concurrency: number;
  seconds: number;
  convergeSeconds: number;
  latency: ReturnType<typeof stats>;
  /** --rows only: the same volume into a plain MergeTree table on replica 1, per insert. */
  plainLatency?: ReturnType<typeof stats>;
  zkRequestsPerInsert: number;
  cpu: Record<string, number>;
  /** Sidecars' main threads over the window (seconds, summed over the 3). */
  mainThreads: { onCpu: number; runqueue: number; wall: number };
  metrics?: MetricsSnapshot;
  queryLog: { kinds: QueryKind[]; hasCpu: boolean };
  profile?: ProfileSummary;
}

async function profileSystem(name: SystemName, opts: Options, log: (m: string) => void): Promise<SystemProfile> {
  const dir = mkdtempSync(join(scratchRoot(), `profile-${name}-`));
  const cpuDir = join(dir, 'cpuprofile');
  const cluster = await devUp({
    replicas: 3,
    dir,
    clickhouseZookeeper: name === 'rmt',
    withoutSidecars: name === 'rmt',
    clickhouseQueryLog: true,
    sidecarNodeArgs: opts.cpuProf && name === 'chorus' ? ['--cpu-prof', `--cpu-prof-dir=${cpuDir}`, `--cpu-prof-interval=${opts.cpuProfIntervalUs}`] : undefined,
  });
  const sys = new System(name, cluster);
  let result: SystemProfile | undefined;
  let window: [number, number] = [0, 0];
  try {
    await sys.createTable('w1');
    if (opts.rows) await sys.sql(0, 'CREATE TABLE default.w1_plain (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id');
    const random = rng(42);
    const plan = (n: number) => Array.from({ length: n }, (_, i) => ({ replica: i % 3, rows: opts.rows ?? 1 + Math.floor(random() * 100) }));
    let inserted = 0;
    const plainLatencies: number[] = [];
    const run = async (items: Array<{ replica: number; rows: number }>, latencies?: number[]) => {
      const bodies = items.map((p, i) => ({ ...p, body: tsvRows(sys.ids(p.rows), p.rows, 6 + (i % 6)) }));
      await runConcurrently(bodies, opts.rows ? 1 : opts.concurrency, async (p) => {
        const t = performance.now();
        await sys.insert(p.replica, 'w1', p.body);
        latencies?.push(performance.now() - t);
        inserted += p.rows;
        if (!opts.rows) return;
        // As W2: the followers' fetches do not overlap the next insert, and a plain insert of the same rows is the yardstick.
        await sys.waitConverged(['w1'], { w1: inserted });
        const plainBody = tsvRows(sys.ids(p.rows), p.rows);
        const tp = performance.now();
        await sys.sql(0, 'INSERT INTO default.w1_plain FORMAT TabSeparated', plainBody);
        if (latencies) plainLatencies.push(performance.now() - tp);
      });
      return items.reduce((s, p) => s + p.rows, 0);
    };
    // Warm-up: staging tables created, caches filled, JIT warm; then everything settles.
    let expected = await run(plan(opts.warmup));
    await sys.waitConverged(['w1'], { w1: expected });
    await sleep(1500);

    const measured = plan(opts.inserts);
    const metricsBefore = name === 'chorus' ? await scrape(cluster) : undefined;
    const zkBefore = await sys.zkPackets();
    const cpuBefore = cpuByType(cluster);
    const threadsBefore = mainThreads(cluster);
    const wallFrom = Date.now() / 1000;
    const monoFrom = Number(process.hrtime.bigint() / 1000n);
    const started = performance.now();
    const latencies: number[] = [];
    expected += await run(measured, latencies);
    const acked = performance.now();
    await sys.waitConverged(['w1'], { w1: expected });
    const converged = performance.now();
    const cpuAfter = cpuByType(cluster);
    const threadsAfter = mainThreads(cluster);
    const monoTo = Number(process.hrtime.bigint() / 1000n);
    const wallTo = Date.now() / 1000;
    const zkAfter = await sys.zkPackets();
    const metricsAfter = name === 'chorus' ? await scrape(cluster) : undefined;
    window = [monoFrom, monoTo];
    const cpu = Object.fromEntries(Object.entries(cpuAfter).map(([k, v]) => [k, v - cpuBefore[k as keyof typeof cpuBefore]]));
    log(`${name}: ${opts.inserts} inserts in ${((acked - started) / 1000).toFixed(1)} s, converged ${((converged - acked) / 1000).toFixed(2)} s later`);
    result = {
      system: name,
      inserts: opts.inserts,
      concurrency: opts.rows ? 1 : opts.concurrency,
      seconds: (acked - started) / 1000,
      convergeSeconds: (converged - acked) / 1000,
      latency: stats(latencies),
      plainLatency: opts.rows ? stats(plainLatencies) : undefined,
      zkRequestsPerInsert: (zkAfter - zkBefore) / opts.inserts,
      cpu,
      mainThreads: {
        onCpu: threadsAfter.onCpu - threadsBefore.onCpu,
        runqueue: threadsAfter.runqueue - threadsBefore.runqueue,
        wall: ((converged - started) / 1000) * cluster.replicas.length,
      },
      metrics: metricsBefore && metricsAfter ? diffMetrics(metricsBefore, metricsAfter) : undefined,
      queryLog: await queryLog(sys, wallFrom, wallTo),
    };
  } finally {
    // Sidecars write their CPU profiles as they stop.
    await devDown(dir);
  }
  if (opts.cpuProf && name === 'chorus') result!.profile = summariseProfiles(cpuDir, window[0], window[1]);
  rmSync(dir, { recursive: true, force: true });
  return result!;
}

// ---------------------------------------------------------------------------------------------
// Markdown

const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

const STEP_NOTES: Record<string, string> = {
  'origin\trequest': 'HTTP handler: grants + pipeline (fastify routing excluded)',
  'origin\ttotal': 'InsertPipeline.insert, start to answer',
  'origin\tstaging.insert': 'INSERT of the rows into the staging table',
  'origin\tstaging.parts': 'staged parts listed from disk (system.parts only as fallback)',
  'origin\tlink': 'hardlink the staged part under pending/ + sha256 of every file (manifest)',
  'origin\tincomplete_check': '18.16 only: part files complete?',
  'origin\tlog.intent': 'SQLite: intent recorded',
  'origin\tallocate': 'LSN + dedup from ZooKeeper (group commit), or gRPC to the allocating replica',
  'origin\tcommit': 'rename pending -> parts/LSN + fsync of parts/',
  'origin\tlog.resolve': 'SQLite: entries recorded, intent resolved',
  'origin\tannounce': 'gossip push queued (the send is async)',
  'origin\tattach': 'whole attach (sub-steps attach.*)',
  'origin\tlog.applied': 'SQLite: applied + block map',
  'origin\tstaging.release': 'after the answer: TRUNCATE of the staging table',
  'origin\tattach.lock_wait': 'per-table attach mutex (attaches of one table are serial)',
  'follower\tqueue_wait': 'allocation on the origin -> apply starts here (push + applier wake-up + slot)',
  'follower\tslot_wait': 'waiting for a fetch slot (fetchConcurrency)',
  'follower\tgossip.receive': 'per push received: validate + LSN bound + store',
  'follower\tlog.add': 'SQLite: received entries stored',
  'follower\tfetch': 'whole fetch (sub-steps fetch.*)',
  'follower\tfetch.connect': 'interserver HTTPS request until response headers',
  'follower\tfetch.download': 'body received (includes verify + write below)',
  'follower\tfetch.verify': 'sha256 of the bytes (summed)',
  'follower\tfetch.write': 'open + writeSync of the files (summed)',
  'follower\tfetch.fsync': 'waiting for the per-file fsyncs still running',
  'follower\tfetch.fsync_dir': 'fsync of the part directory',
  'follower\tfetch.rename': 'rename into parts/LSN + fsync of parts/',
  'follower\ttotal': 'applyOne: fetch + attach + log',
};

const ATTACH_NOTES: Record<string, string> = {
  'attach.log': 'SQLite: attach floor / attaching / attach done (3 calls)',
  'attach.stat': 'table data dir on the part store volume (stat)',
  'attach.max_block': 'max block query, only while the floor is unknown',
  'attach.link': 'hardlink into detached/ (+ chown as root)',
  'attach.query': 'ALTER TABLE ... ATTACH PART',
  'attach.find': 'find the attached part by content (on disk first, system.parts as fallback)',
  'attach.columns': '18.16 only: columns.txt of the attached part checked',
};

const ORIGIN_ORDER = ['request', 'grants', 'total', 'catalog', 'staging.acquire', 'staging.insert', 'staging.parts', 'link', 'incomplete_check', 'log.intent', 'allocate', 'commit', 'log.resolve', 'announce', 'attach', 'attach.lock_wait', 'attach.log', 'attach.stat', 'attach.max_block', 'attach.link', 'attach.query', 'attach.find', 'attach.columns', 'log.applied', 'staging.release'];
const FOLLOWER_ORDER = ['gossip.receive', 'log.add', 'queue_wait', 'slot_wait', 'total', 'fetch', 'fetch.connect', 'fetch.download', 'fetch.verify', 'fetch.write', 'fetch.fsync', 'fetch.fsync_dir', 'fetch.rename', 'attach', 'attach.lock_wait', 'attach.log', 'attach.stat', 'attach.max_block', 'attach.link', 'attach.query', 'attach.find', 'attach.columns', 'log.applied'];

function stepTable(p: SystemProfile): string {
  const m = p.metrics!;
  const n = p.inserts;
  const rows: string[] = ['| step | role | count per insert | mean wall ms | p99 ms (from buckets) | wall ms per insert | ClickHouse queries per insert | notes |', '|---|---|---:|---:|---:|---:|---:|---|'];
  const keys = [...new Set([...m.steps.keys(), ...m.queries.keys()])];
  const order = (k: string) => {
    const [role, step] = k.split('\t') as [string, string];
    const list = role === 'origin' ? ORIGIN_ORDER : role === 'follower' ? FOLLOWER_ORDER : [];
    const i = list.indexOf(step);
    return (role === 'origin' ? 0 : role === 'follower' ? 1000 : 2000) + (i < 0 ? 500 : i);
  };
  for (const key of keys.sort((a, b) => order(a) - order(b))) {
    const [role, step] = key.split('\t') as [string, string];
    const s = m.steps.get(key);
    const q = m.queries.get(key) ?? 0;
    if ((!s || s.count === 0) && q === 0) continue;
    const indent = step.includes('.') && (step.startsWith('attach.') || step.startsWith('fetch.')) ? '&nbsp;&nbsp;' : '';
    const note = STEP_NOTES[key] ?? ATTACH_NOTES[step] ?? (step === 'other' ? 'queries outside the insert path (background, grants, catalog)' : '');
    rows.push(
      `| ${indent}${step} | ${role} | ${s ? f(s.count / n, 2) : '-'} | ${s && s.count ? f((s.sum / s.count) * 1000, 3) : '-'} | ${s && s.count ? f(bucketQuantile(s, 0.99) * 1000, 1) : '-'} | ${s ? f((s.sum / n) * 1000, 2) : '-'} | ${f(q / n, 2)} | ${note} |`,
    );
  }
  const totalQueries = [...m.queries.values()].reduce((a, b) => a + b, 0);
  rows.push('', `ClickHouse queries sent by the sidecars in all: ${f(totalQueries / n, 2)} per insert (all 3 sidecars).`);
  return rows.join('\n');
}

function queryLogTable(p: SystemProfile): string {
  const n = p.inserts;
  const rows = [
    `| query kind (${p.system}) | per insert | mean duration ms | user CPU ms per query | system CPU ms per query | CPU ms per insert |`,
    '|---|---:|---:|---:|---:|---:|',
  ];
  let total = { count: 0, cpu: 0 };
  for (const k of p.queryLog.kinds) {
    const cpuMs = (k.userUs + k.systemUs) / 1000;
    total = { count: total.count + k.count, cpu: total.cpu + cpuMs };
    rows.push(`| ${k.kind.replace(/\|/g, '\\|')} | ${f(k.count / n, 2)} | ${f(k.durationMs / k.count, 2)} | ${f(k.userUs / k.count / 1000, 3)} | ${f(k.systemUs / k.count / 1000, 3)} | ${f(cpuMs / n, 3)} |`);
  }
  rows.push(`| **all** | **${f(total.count / n, 2)}** | | | | **${f(total.cpu / n, 3)}** |`);
  if (!p.queryLog.hasCpu) rows.push('', 'This ClickHouse reports no UserTimeMicroseconds/SystemTimeMicroseconds in query_log: CPU columns are 0.');
  return rows.join('\n');
}

function cpuTable(results: SystemProfile[]): string {
  const types = ['sidecar', 'clickhouse-server', 'zookeeper', 'load generator'];
  const head = `| process type | ${results.map((r) => `${r.system} CPU s (run)`).join(' | ')} | ${results.map((r) => `${r.system} CPU ms / insert`).join(' | ')} |`;
  const rows = [head, `|---|${results.map(() => '---:|').join('')}${results.map(() => '---:|').join('')}`];
  for (const t of types) {
    rows.push(`| ${t} | ${results.map((r) => f(r.cpu[t] ?? 0, 2)).join(' | ')} | ${results.map((r) => f(((r.cpu[t] ?? 0) / r.inserts) * 1000, 2)).join(' | ')} |`);
  }
  const sum = (r: SystemProfile) => types.filter((t) => t !== 'load generator').reduce((s, t) => s + (r.cpu[t] ?? 0), 0);
  rows.push(`| **cluster (without load generator)** | ${results.map((r) => `**${f(sum(r), 2)}**`).join(' | ')} | ${results.map((r) => `**${f((sum(r) / r.inserts) * 1000, 2)}**`).join(' | ')} |`);
  const chorus = results.find((r) => r.system === 'chorus');
  const mainLine = chorus
    ? `\n\nSidecars' main threads (JS, SQLite, sync fs calls; 3 summed, schedstat): ${f(chorus.mainThreads.onCpu, 2)} s on a CPU (${f((chorus.mainThreads.onCpu / chorus.inserts) * 1000, 2)} ms per insert, ${f((100 * chorus.mainThreads.onCpu) / Math.max(1e-9, chorus.cpu.sidecar ?? 0), 0)}% of the sidecars' CPU; the rest is libuv pool (fsync, async fs), V8 GC/compiler threads), ${f(chorus.mainThreads.runqueue, 2)} s runnable waiting for a core, of ${f(chorus.mainThreads.wall, 1)} s wall.`
    : '';
  rows.push(`| machine, all processes (/proc/stat) | ${results.map((r) => f(r.cpu['machine (all processes)'] ?? 0, 2)).join(' | ')} | ${results.map((r) => f(((r.cpu['machine (all processes)'] ?? 0) / r.inserts) * 1000, 2)).join(' | ')} |`);
  return rows.join('\n') + mainLine;
}

function runLine(p: SystemProfile): string {
  const plain = p.plainLatency ? ` A plain MergeTree insert of the same rows on one server: p50 ${f(p.plainLatency.p50, 1)} ms; the insert's p50 is ${f((p.latency.p50 / p.plainLatency.p50 - 1) * 100, 0)}% more.` : '';
  return `- ${p.system}: ${p.inserts} inserts at concurrency ${p.concurrency} in ${f(p.seconds, 1)} s (${f(p.inserts / p.seconds, 1)} inserts/s), converged ${f(p.convergeSeconds, 2)} s after the last answer; client latency p50 ${f(p.latency.p50, 1)} ms, p99 ${f(p.latency.p99, 1)} ms; ${f(p.zkRequestsPerInsert, 2)} ZooKeeper requests per insert; CPU window ${f(p.seconds + p.convergeSeconds, 1)} s (run + convergence).${plain}`;
}

function profileTables(p: ProfileSummary, inserts: number, procCpuSeconds: number): string {
  // The profiler samples the main thread's wall time whenever it is not idle, runnable-but-waiting
  // for a core included: its shares are what to read, scaled to the CPU /proc counted.
  const cpuPerInsert = (ms: number) => ((ms / p.busyMs) * procCpuSeconds * 1000) / inserts;
  const rows = [
    `${p.files} profiles; within the run: ${f(p.busyMs / 1000, 2)} s non-idle of ${f(p.windowMs / 1000, 2)} s sampled (main threads of 3 sidecars), against ${f(procCpuSeconds, 2)} s of CPU counted by /proc (all threads). "CPU ms per insert" below is each share of the non-idle samples times the /proc figure.`,
    '',
    '| area | self ms (samples) | % of non-idle | CPU ms per insert (scaled) |',
    '|---|---:|---:|---:|',
    ...p.byArea.slice(0, 22).map((a) => `| ${a.name} | ${f(a.ms, 0)} | ${f((100 * a.ms) / p.busyMs, 1)} | ${f(cpuPerInsert(a.ms), 3)} |`),
    '',
    '| function (self time) | self ms (samples) | % of non-idle | CPU ms per insert (scaled) |',
    '|---|---:|---:|---:|',
    ...p.byFunction.slice(0, 15).map((x) => `| \`${x.name.replace(/\|/g, '\\|')}\` | ${f(x.ms, 0)} | ${f((100 * x.ms) / p.busyMs, 1)} | ${f(cpuPerInsert(x.ms), 3)} |`),
  ];
  return rows.join('\n');
}

export function renderProfile(results: SystemProfile[], opts: Options): string {
  const out: string[] = [];
  const shape = opts.rows ? `${opts.rows} rows each, one at a time, replication settled after each (W2-like)` : `1-100 rows, concurrency ${opts.concurrency}`;
  out.push(`## Profile run: ${opts.inserts} inserts of ${shape}, round-robin over 3 replicas, CPU profile ${opts.cpuProf ? `ON, sampling every ${opts.cpuProfIntervalUs} µs (skews timings)` : 'off'}`);
  out.push('', `${new Date().toISOString()}, ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${process.version}. The box is shared: timings are noisy, counts and ratios hold.`, '');
  for (const r of results) out.push(runLine(r));
  const chorus = results.find((r) => r.system === 'chorus');
  if (chorus?.metrics) out.push('', '### Chorus: steps of one insert (sidecar metrics, summed over the 3 sidecars)', '', 'count per insert: observations / inserts (a follower step runs on 2 replicas: 2 per insert). wall ms per insert = count x mean: steps overlap (sub-steps are inside their parent, and concurrent inserts overlap), so this is latency, not CPU.', '', stepTable(chorus));
  for (const r of results) out.push('', `### ${r.system}: ClickHouse queries per insert, all 3 servers (system.query_log)`, '', queryLogTable(r));
  out.push('', '### CPU per insert by process type (/proc utime+stime over run + convergence)', '', cpuTable(results));
  if (chorus?.profile) out.push('', '### Chorus sidecars: CPU profile over the run (self time)', '', profileTables(chorus.profile, chorus.inserts, chorus.cpu.sidecar ?? 0));
  return out.join('\n') + '\n';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      inserts: { type: 'string', default: '600' },
      concurrency: { type: 'string', default: '8' },
      warmup: { type: 'string', default: '60' },
      'cpu-prof': { type: 'boolean', default: false },
      'cpu-prof-interval': { type: 'string', default: '1000' },
      systems: { type: 'string', default: 'chorus,rmt' },
      json: { type: 'boolean', default: false },
      rows: { type: 'string' },
    },
  });
  const opts: Options = {
    inserts: Number(values.inserts),
    concurrency: Number(values.concurrency),
    warmup: Number(values.warmup),
    cpuProf: values['cpu-prof']!,
    cpuProfIntervalUs: Number(values['cpu-prof-interval']),
    systems: values.systems!.split(',') as SystemName[],
    rows: values.rows !== undefined ? Number(values.rows) : undefined,
  };
  const log = (m: string) => process.stderr.write(`profile: ${m}\n`);
  const results: SystemProfile[] = [];
  for (const s of opts.systems) results.push(await profileSystem(s, opts, log));
  process.stdout.write(renderProfile(results, opts));
  if (values.json) process.stderr.write(JSON.stringify(results, (_k, v: unknown) => (v instanceof Map ? Object.fromEntries(v) : v), 2) + '\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`profile: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
