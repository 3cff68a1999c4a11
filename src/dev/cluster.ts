import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as toYaml } from 'yaml';
import { LOOPBACK, listenHost, startClickHouse, type ClickHouseBackend, type Placement } from './clickhouse.js';
import { sleep } from '../core/async.js';
import { freePort, httpOk, isAlive, signalGroup, spawnDetached, stopProcess, waitFor } from './processes.js';
import { startZooKeeper } from './zookeeper.js';
import { createDevCa, issueDevCertificate, type TlsFiles } from './certs.js';

export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const SIDECAR_ENTRY = join(PACKAGE_ROOT, 'dist', 'cli', 'main.js');

/**
 * V8 flags every sidecar runs with, here and in the image (its NODE_OPTIONS; a test holds the
 * two equal). A 2 MiB young generation instead of V8's 16: the sidecar's RSS fell from 140 to
 * 116 MB under W1 at concurrency 8 with no measurable CPU cost (issue 12's analysis).
 */
export const SIDECAR_V8_FLAGS = ['--max-semi-space-size=2'];

/** Where tests and benchmarks make their temp dirs; CHORUS_SCRATCH_DIR moves them (another disk, say). */
export function scratchRoot(): string {
  const dir = process.env.CHORUS_SCRATCH_DIR ?? join(tmpdir(), 'chorus');
  mkdirSync(dir, { recursive: true });
  return dir;
}

export interface ReplicaInfo {
  name: string;
  http: string;
  clickhouse: string;
  grpc: string;
  interserver: string;
  pids: { clickhouse: number; sidecar: number };
  dir: string;
  /** Where its ClickHouse and sidecar run: loopback, or a network namespace of the chaos suite. */
  placement: Placement;
  /** Its certificate (CN = name), absent when the cluster runs insecure. */
  tls?: TlsFiles;
  ports: { http: number; interserver: number; grpc: number; clickhouseHttp: number; clickhouseTcp: number; clickhouseInterserver: number };
}

export interface ClusterInfo {
  dir: string;
  zookeeper: string;
  zookeeperHost: string;
  zookeeperPort: number;
  zookeeperPid: number;
  shard: string;
  cluster: string;
  /** What plays ClickHouse: Debian's clickhouse-server, or ClickHouse 26's engine from chdb. */
  clickhouseBackend: ClickHouseBackend;
  /** The bearer token of every sidecar's Admin API (CHORUS_ADMIN_TOKEN for the CLI). */
  adminToken: string;
  /**
   * Mutual TLS of the gRPC and interserver ports: the throwaway CA's directory and the CLI's
   * certificate (CN chorus-cli), or insecure (plaintext) when started so.
   */
  tls: { insecure: boolean; dir: string; cli?: TlsFiles };
  /** The `user:password` digest that guards the shard's znodes (zookeeper.auth). */
  zookeeperAuth: string;
  /** Extra arguments to node for every sidecar (a restart keeps them), e.g. `--cpu-prof --cpu-prof-dir=D`. */
  sidecarNodeArgs?: string[];
  replicas: ReplicaInfo[];
}

export interface DevUpOptions {
  replicas: number;
  dir: string;
  /** `server` (default) or `chdb`. */
  clickhouse?: ClickHouseBackend;
  /** Extra config keys for every sidecar (dotted paths), e.g. { testFaults: true }. */
  sidecarConfig?: Record<string, unknown>;
  /** Start ClickHouse with a <zookeeper> section (for ReplicatedMergeTree baselines). */
  clickhouseZookeeper?: boolean;
  /** Start only ZooKeeper and ClickHouse, no sidecars. */
  withoutSidecars?: boolean;
  /**
   * Extra arguments to node for every sidecar, e.g. `--cpu-prof --cpu-prof-dir=D` to profile them
   * (written when they stop; NODE_OPTIONS may not carry --cpu-prof). Defaults to
   * $CHORUS_SIDECAR_NODE_ARGS split at spaces.
   */
  sidecarNodeArgs?: string[];
  /** Every query of every ClickHouse in system.query_log (log_queries=1 in the default profile), for profiling. */
  clickhouseQueryLog?: boolean;
  /** Plaintext gRPC and interserver ports (tls.insecure), for tests of that mode. */
  insecure?: boolean;
  /**
   * Runs each replica in a network namespace (the chaos suite's), listening at its address
   * there, and ZooKeeper on the host at `zookeeperHost` (the namespaces' bridge), so that
   * dropping packets between those addresses partitions the shard.
   */
  network?: { zookeeperHost: string; replicas: Record<string, Placement> };
}

const stateFile = (dir: string) => join(dir, 'cluster.json');

export function readCluster(dir: string): ClusterInfo {
  const file = stateFile(resolve(dir));
  if (!existsSync(file)) throw new Error(`no dev cluster in ${dir} (${file} missing)`);
  return JSON.parse(readFileSync(file, 'utf8')) as ClusterInfo;
}

/**
 * Starts ZooKeeper, N ClickHouse servers and N sidecars on free loopback ports, data under
 * `dir`, and returns once every one is ready. They keep running after this process exits;
 * `devDown(dir)` stops them by the pids recorded in dir/cluster.json.
 */
export async function devUp(opts: DevUpOptions): Promise<ClusterInfo> {
  const dir = resolve(opts.dir);
  mkdirSync(dir, { recursive: true });
  if (existsSync(stateFile(dir))) {
    const previous = readCluster(dir);
    if (isAlive(previous.zookeeperPid)) throw new Error(`a dev cluster is already running in ${dir}; run \`chorus dev down --dir ${dir}\` first`);
  }
  const zkPort = await freePort();
  const zkHost = opts.network?.zookeeperHost ?? '127.0.0.1';
  const info: ClusterInfo = {
    dir,
    zookeeper: `${zkHost}:${zkPort}`,
    zookeeperHost: zkHost,
    zookeeperPort: zkPort,
    zookeeperPid: 0,
    shard: 'shard1',
    cluster: 'dev',
    clickhouseBackend: opts.clickhouse ?? 'server',
    adminToken: randomBytes(16).toString('hex'),
    tls: { insecure: opts.insecure ?? false, dir: join(dir, 'tls') },
    zookeeperAuth: `chorus:${randomBytes(12).toString('hex')}`,
    sidecarNodeArgs: opts.sidecarNodeArgs ?? process.env.CHORUS_SIDECAR_NODE_ARGS?.split(/\s+/).filter(Boolean),
    replicas: [],
  };
  const save = () => writeFileSync(stateFile(dir), JSON.stringify(info, null, 2));
  try {
    info.zookeeperPid = await startZooKeeper(join(dir, 'zookeeper'), zkPort, zkHost);
    save();
    const names = Array.from({ length: opts.replicas }, (_, i) => `r${i + 1}`);
    if (!info.tls.insecure) {
      createDevCa(info.tls.dir);
      info.tls.cli = issueDevCertificate(info.tls.dir, 'chorus-cli');
    }
    const scheme = info.tls.insecure ? 'http' : 'https';
    for (const name of names) {
      const placement = opts.network?.replicas[name] ?? LOOPBACK;
      const host = placement.address;
      const ports = {
        http: await freePort(),
        interserver: await freePort(),
        grpc: await freePort(),
        clickhouseHttp: await freePort(),
        clickhouseTcp: await freePort(),
        clickhouseInterserver: await freePort(),
      };
      info.replicas.push({
        name,
        http: `http://${host}:${ports.http}`,
        clickhouse: `http://${host}:${ports.clickhouseHttp}`,
        grpc: `${host}:${ports.grpc}`,
        interserver: `${scheme}://${host}:${ports.interserver}`,
        pids: { clickhouse: 0, sidecar: 0 },
        dir: join(dir, name),
        placement,
        ...(info.tls.insecure ? {} : { tls: issueDevCertificate(info.tls.dir, name) }),
        ports,
      });
    }
    save();
    await Promise.all(
      info.replicas.map(async (r) => {
        r.pids.clickhouse = await startClickHouse(
          info.clickhouseBackend,
          join(r.dir, 'clickhouse'),
          { http: r.ports.clickhouseHttp, tcp: r.ports.clickhouseTcp, interserver: r.ports.clickhouseInterserver },
          {
            ...(opts.clickhouseZookeeper ? { zookeeper: info.zookeeper, macros: { shard: info.shard, replica: r.name } } : {}),
            placement: r.placement,
            queryLog: opts.clickhouseQueryLog,
          },
        );
        save();
      }),
    );
    if (!opts.withoutSidecars) {
      for (const r of info.replicas) writeSidecarConfig(info, r, opts.sidecarConfig ?? {});
      await Promise.all(info.replicas.map((r) => startSidecar(info, r)));
    }
    save();
    return info;
  } catch (err) {
    save();
    await devDown(dir).catch(() => undefined);
    throw err;
  }
}

function sidecarConfigPath(r: ReplicaInfo): string {
  return join(r.dir, 'chorus.yaml');
}

function writeSidecarConfig(info: ClusterInfo, r: ReplicaInfo, extra: Record<string, unknown>): void {
  const config: Record<string, unknown> = {
    replica: r.name,
    shard: info.shard,
    cluster: info.cluster,
    dataDir: join(r.dir, 'chorus'),
    logLevel: 'info',
    clickhouse: { url: r.clickhouse },
    zookeeper: { connect: info.zookeeper, sessionTimeoutMs: 10_000, auth: info.zookeeperAuth },
    http: { host: listenHost(r.placement), port: r.ports.http },
    interserver: { host: listenHost(r.placement), port: r.ports.interserver },
    grpc: { host: listenHost(r.placement), port: r.ports.grpc },
    peers: info.replicas.map((p) => ({ name: p.name, grpc: p.grpc, interserver: p.interserver })),
    admin: { token: info.adminToken },
    // A short reload period, so that a rotation test sees new files within a second.
    tls: r.tls ? { ...r.tls, reloadIntervalMs: 500 } : { insecure: true },
  };
  for (const [key, value] of Object.entries(extra)) {
    const path = key.split('.');
    let node = config;
    for (const k of path.slice(0, -1)) node = (node[k] ??= {}) as Record<string, unknown>;
    node[path[path.length - 1]!] = value;
  }
  mkdirSync(r.dir, { recursive: true });
  writeFileSync(sidecarConfigPath(r), toYaml(config));
}

export async function startSidecar(info: ClusterInfo, r: ReplicaInfo): Promise<void> {
  if (!existsSync(SIDECAR_ENTRY)) throw new Error(`${SIDECAR_ENTRY} is missing: run \`npm run build\` first`);
  const logFile = join(r.dir, 'sidecar.log');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CHORUS_')));
  r.pids.sidecar = spawnDetached(process.execPath, [...SIDECAR_V8_FLAGS, ...(info.sidecarNodeArgs ?? []), SIDECAR_ENTRY, 'serve', '--config', sidecarConfigPath(r)], { logFile, env, netns: r.placement?.netns });
  saveCluster(info);
  await waitFor(`sidecar ${r.name}`, () => httpOk(`${r.http}/readyz`), { timeoutMs: 60_000, pid: r.pids.sidecar, logFile });
}

export type Component = 'sidecar' | 'clickhouse' | 'zookeeper';

function saveCluster(info: ClusterInfo): void {
  writeFileSync(stateFile(info.dir), JSON.stringify(info, null, 2));
}

function replicaNamed(info: ClusterInfo, name: string): ReplicaInfo {
  const r = info.replicas.find((x) => x.name === name);
  if (!r) throw new Error(`no replica ${name} in ${info.dir} (replicas: ${info.replicas.map((x) => x.name).join(', ')})`);
  return r;
}

function pidOf(info: ClusterInfo, name: string, component: Component): number {
  if (component === 'zookeeper') return info.zookeeperPid;
  return replicaNamed(info, name).pids[component];
}

/**
 * Sends a signal to one component of a replica (or to ZooKeeper): KILL and TERM wait until it
 * is gone, STOP and CONT only deliver. For failure drills by hand and in tests.
 */
export async function devKill(dir: string, name: string, component: Component = 'sidecar', signal: 'KILL' | 'TERM' | 'STOP' | 'CONT' = 'KILL'): Promise<void> {
  const info = readCluster(dir);
  const pid = pidOf(info, name, component);
  if (!pid || !isAlive(pid)) return;
  if (signal === 'TERM') return stopProcess(pid);
  signalGroup(pid, `SIG${signal}`);
  if (signal === 'KILL') while (isAlive(pid)) await sleep(20);
}

/** Starts a component again with the ports, config and data it had; a running one is left alone. */
export async function devStart(dir: string, name: string, component: Component | 'all' = 'all'): Promise<void> {
  const info = readCluster(dir);
  if (component === 'zookeeper') {
    if (!isAlive(info.zookeeperPid)) {
      info.zookeeperPid = await startZooKeeper(join(info.dir, 'zookeeper'), info.zookeeperPort, info.zookeeperHost ?? '127.0.0.1');
      saveCluster(info);
    }
    return;
  }
  const r = replicaNamed(info, name);
  if ((component === 'all' || component === 'clickhouse') && !isAlive(r.pids.clickhouse)) {
    r.pids.clickhouse = await startClickHouse(
      info.clickhouseBackend ?? 'server',
      join(r.dir, 'clickhouse'),
      { http: r.ports.clickhouseHttp, tcp: r.ports.clickhouseTcp, interserver: r.ports.clickhouseInterserver },
      {
        ...(existsSync(join(r.dir, 'clickhouse', 'config.xml')) && readFileSync(join(r.dir, 'clickhouse', 'config.xml'), 'utf8').includes('<zookeeper>')
          ? { zookeeper: info.zookeeper, macros: { shard: info.shard, replica: r.name } }
          : {}),
        placement: r.placement ?? LOOPBACK,
      },
    );
    saveCluster(info);
  }
  if ((component === 'all' || component === 'sidecar') && !isAlive(r.pids.sidecar)) await startSidecar(info, r);
}

/**
 * Stops a replica and empties its ClickHouse data and Chorus state, as a new pod on a lost
 * volume would find them; `devStart` brings it back empty.
 */
export async function devWipe(dir: string, name: string): Promise<void> {
  const info = readCluster(dir);
  const r = replicaNamed(info, name);
  await stopProcess(r.pids.sidecar);
  await stopProcess(r.pids.clickhouse, 20_000);
  rmSync(join(r.dir, 'clickhouse', 'data'), { recursive: true, force: true });
  rmSync(join(r.dir, 'clickhouse', 'tmp'), { recursive: true, force: true });
  rmSync(join(r.dir, 'chorus'), { recursive: true, force: true });
}

/** Stops everything `devUp` started in `dir`, sidecars first, ZooKeeper last. */
export async function devDown(dir: string): Promise<void> {
  const info = readCluster(dir);
  await Promise.all(info.replicas.map((r) => (r.pids.sidecar ? stopProcess(r.pids.sidecar) : undefined)));
  await Promise.all(info.replicas.map((r) => (r.pids.clickhouse ? stopProcess(r.pids.clickhouse, 20_000) : undefined)));
  if (info.zookeeperPid) await stopProcess(info.zookeeperPid);
}
