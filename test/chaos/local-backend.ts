import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statfsSync, symlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { ClickHouseBackend } from '../../src/dev/clickhouse.js';
import { devDown, devKill, devStart, devUp, readCluster, scratchRoot, type ClusterInfo, type Component, type ReplicaInfo } from '../../src/dev/cluster.js';
import type { AdminStatus } from '../../src/api/admin.js';
import { isAlive, signalGroup } from '../../src/dev/processes.js';
import { FAULT_KINDS, type BackendStartOptions, type ChaosBackend, type Fault, type FaultKind, type HttpOutcome, type HttpRequest, type Injected } from './backend.js';
import { ChaosNetwork, chaosNetworkUnavailable, run, tryRun } from './network.js';
import { reportedDuplicates, sidecarSettled } from './settled.js';

/*
 * The local backend: the dev cluster of `npm start` (ZooKeeper, ClickHouse and a sidecar per
 * replica, the same devUp), each replica's two processes in a network namespace of their own
 * joined to ZooKeeper and to this process by a bridge, so partitions drop real packets; each
 * replica's directory on a tmpfs of its own, so its disk can be filled.
 */

export interface LocalBackendOptions extends Partial<BackendStartOptions> {
  /** Each replica's tmpfs (its ClickHouse data, Chorus's log and part store). */
  diskBytes?: number;
  /** The sidecars' ZooKeeper session timeout; expire-zookeeper-session cuts a replica off longer than this. */
  zookeeperSessionTimeoutMs?: number;
  /** Leaves the cluster's directory (logs) in place after close. */
  keepDir?: boolean;
}

interface LocalSettings {
  clickhouse: ClickHouseBackend;
  replicas: number;
  databases: readonly string[];
  diskBytes: number;
  zookeeperSessionTimeoutMs: number;
  keepDir: boolean;
  leaseSize: number;
}

const PREFIX = 'chaos';
/** The run's directory carries the owning pid, so a later run can tell a crashed run's mounts from a live one's. */
const RUN_DIR = new RegExp(`^${PREFIX}-(\\d+)-`);
const DEFAULT_DISK_BYTES = 2 * 1024 ** 3;
const FILLER = 'disk-full.filler';

/** Why this machine cannot run the local backend, or undefined when it can. */
export function localBackendUnavailable(): string | undefined {
  return chaosNetworkUnavailable();
}

export class LocalBackend implements ChaosBackend {
  readonly name = 'local';
  readonly supportedFaults: ReadonlySet<FaultKind> = new Set(FAULT_KINDS);
  readonly unexpectedExits: string[] = [];
  private closed = false;

  private constructor(
    private readonly dir: string,
    private readonly network: ChaosNetwork,
    private readonly mounts: string[],
    private readonly options: LocalSettings,
    private readonly log: (line: string) => void,
  ) {}

  get zookeeperSessionTimeoutMs(): number {
    return this.options.zookeeperSessionTimeoutMs;
  }

  get replicas(): readonly string[] {
    return this.info.replicas.map((r) => r.name);
  }

  /** Read from disk each time: devStart records the new pids there. */
  get info(): ClusterInfo {
    return readCluster(this.dir);
  }

  static async start(options: LocalBackendOptions = {}): Promise<LocalBackend> {
    const why = localBackendUnavailable();
    if (why) throw new Error(`the local chaos backend cannot run here: ${why}`);
    const settings: LocalSettings = {
      clickhouse: options.clickhouse ?? 'server',
      replicas: options.replicas ?? 3,
      databases: options.databases ?? ['default'],
      diskBytes: options.diskBytes ?? DEFAULT_DISK_BYTES,
      zookeeperSessionTimeoutMs: options.zookeeperSessionTimeoutMs ?? 10_000,
      keepDir: options.keepDir ?? options.keep ?? false,
      leaseSize: options.leaseSize ?? 0,
    };
    const log = options.log ?? (() => undefined);
    sweepStaleRuns();
    const names = Array.from({ length: settings.replicas }, (_, i) => `r${i + 1}`);
    const dir = join(scratchRoot(), `${PREFIX}-${process.pid}-${Date.now().toString(36)}`);
    mkdirSync(dir, { recursive: true });
    const network = ChaosNetwork.create({ prefix: PREFIX, members: names });
    const mounts: string[] = [];
    try {
      for (const name of names) mountDataDisk(join(dir, name), settings.diskBytes, mounts);
      await devUp({
        dir,
        replicas: settings.replicas,
        clickhouse: settings.clickhouse,
        network: {
          zookeeperHost: network.hostAddress,
          replicas: Object.fromEntries(names.map((n) => [n, { address: network.address(n), netns: network.namespace(n) }])),
        },
        sidecarConfig: {
          testFaults: true,
          'zookeeper.sessionTimeoutMs': settings.zookeeperSessionTimeoutMs,
          'clickhouse.databases': [...settings.databases],
          // A lease lying below newer writes is replaced after 2 s (30 s by default), so that the
          // faults also hit replicas in the middle of replacing theirs.
          ...(settings.leaseSize ? { 'zookeeper.leaseSize': settings.leaseSize, 'zookeeper.leaseRenewMs': 2_000 } : {}),
        },
      });
      log(`local backend: ${settings.replicas} replicas (${settings.clickhouse}) in network namespaces on ${network.hostAddress}/24, data in ${dir}`);
    } catch (error) {
      await teardown(dir, network, mounts, settings.keepDir);
      throw error;
    }
    return new LocalBackend(dir, network, mounts, settings, log);
  }

  async chorus(request: HttpRequest): Promise<HttpOutcome> {
    const url = new URL(`${this.replica(request.replica).http}/`);
    url.searchParams.set('query', request.query);
    for (const [k, v] of Object.entries(request.params ?? {})) url.searchParams.set(k, v);
    return post(url, request.body ?? '', request.timeoutMs);
  }

  async clickhouse(replica: string, sql: string): Promise<string> {
    const outcome = await post(new URL(`${this.replica(replica).clickhouse}/?query=${encodeURIComponent(sql)}`), '', 30_000);
    if (outcome.kind === 'reply' && outcome.status === 200) return outcome.body;
    throw new Error(`ClickHouse ${replica}: ${outcome.kind === 'reply' ? `${outcome.status} ${outcome.body.trim()}` : outcome.error}`);
  }

  async onEvery(sql: string): Promise<void> {
    for (const name of this.replicas) await this.clickhouse(name, sql);
  }

  /**
   * Fills `replica`'s disk up to `freeBytes` short of full (rounded to the filesystem's blocks),
   * for tests that look at what happens at the edge; the returned function frees it again.
   */
  fillDiskLeaving(replica: string, freeBytes: number): () => void {
    const filler = join(this.replica(replica).dir, 'disk', FILLER);
    fillDisk(filler, freeBytes);
    return () => rmSync(filler, { force: true });
  }

  async inject(fault: Fault): Promise<Injected> {
    const injected = await this.injectOnly(fault);
    // As a kubelet would: whatever died meanwhile without being killed on purpose is started again, and told.
    const heal = async () => {
      await injected.heal();
      await this.reviveDead(`the end of ${fault.kind} on ${fault.target}`);
    };
    return { detail: injected.detail, heal: once(heal) };
  }

  private async reviveDead(when: string): Promise<void> {
    const info = this.info;
    if (!isAlive(info.zookeeperPid)) {
      this.unexpectedExits.push(`ZooKeeper had exited (found at ${when})`);
      await devStart(this.dir, '', 'zookeeper');
    }
    for (const r of info.replicas) {
      for (const component of ['clickhouse', 'sidecar'] as const) {
        if (isAlive(r.pids[component])) continue;
        this.unexpectedExits.push(`${r.name}'s ${component} had exited (found at ${when}); see ${join(r.dir, component === 'sidecar' ? 'sidecar.log' : 'clickhouse')}`);
        this.log(`local backend: ${this.unexpectedExits.at(-1)}`);
        await devStart(this.dir, r.name, component);
      }
    }
  }

  private async injectOnly(fault: Fault): Promise<Injected> {
    const r = this.replica(fault.target);
    const net = this.network;
    switch (fault.kind) {
      case 'kill-sidecar':
      case 'kill-clickhouse': {
        const component: Component = fault.kind === 'kill-sidecar' ? 'sidecar' : 'clickhouse';
        const pid = r.pids[component];
        await devKill(this.dir, r.name, component, 'KILL');
        return { detail: `kill -9 ${r.name}'s ${component} (pid ${pid})`, heal: once(() => devStart(this.dir, r.name, component)) };
      }
      case 'restart-zookeeper': {
        const pid = this.info.zookeeperPid;
        await devKill(this.dir, '', 'zookeeper', 'KILL');
        return { detail: `kill -9 ZooKeeper (pid ${pid})`, heal: once(() => devStart(this.dir, '', 'zookeeper')) };
      }
      case 'expire-zookeeper-session':
      case 'partition-zookeeper': {
        net.isolateFromHostPort(r.name, this.info.zookeeperPort);
        const detail = `${r.name} (${net.address(r.name)}) cut from ZooKeeper ${net.hostAddress}:${this.info.zookeeperPort}`;
        return { detail: fault.kind === 'expire-zookeeper-session' ? `${detail}, longer than its ${this.options.zookeeperSessionTimeoutMs} ms session` : detail, heal: once(async () => net.heal()) };
      }
      case 'partition-replica':
        net.isolate(r.name, { from: 'peers' });
        return { detail: `${r.name} (${net.address(r.name)}) cut from its peers`, heal: once(async () => net.heal()) };
      case 'partition-one-way': {
        const other = fault.other ?? this.replicas.find((n) => n !== r.name)!;
        net.partition(r.name, other, { oneWay: true });
        return { detail: `packets ${r.name} -> ${other} dropped, ${other} -> ${r.name} delivered`, heal: once(async () => net.heal()) };
      }
      case 'pause-sidecar':
        await devKill(this.dir, r.name, 'sidecar', 'STOP');
        return { detail: `SIGSTOP ${r.name}'s sidecar (pid ${r.pids.sidecar})`, heal: once(() => devKill(this.dir, r.name, 'sidecar', 'CONT')) };
      case 'slow-network': {
        const slow = { rateKbit: 512, latencyMs: 400, lossPercent: 5 };
        net.slow(r.name, slow);
        return { detail: `${r.name}'s link limited to ${slow.rateKbit} kbit/s, ${slow.latencyMs} ms of queue, ${slow.lossPercent}% loss`, heal: once(async () => net.clearSlow(r.name)) };
      }
      case 'corrupt-parts':
        await this.armFaults(r, { corruptServedFiles: 1_000_000 });
        return { detail: `${r.name} flips a byte in every part file it serves`, heal: once(() => this.armFaults(r, { corruptServedFiles: 0 })) };
      case 'disk-full': {
        const filler = join(r.dir, 'disk', FILLER);
        const free = fillDisk(filler);
        return { detail: `${r.name}'s disk filled (${(free / 1024 ** 2).toFixed(0)} MiB taken by ${FILLER})`, heal: once(async () => rmSync(filler, { force: true })) };
      }
    }
  }

  async healAll(): Promise<void> {
    this.network.heal();
    for (const name of this.replicas) this.network.clearSlow(name);
    const info = this.info;
    for (const r of info.replicas) {
      rmSync(join(r.dir, 'disk', FILLER), { force: true });
      if (isAlive(r.pids.sidecar)) await devKill(this.dir, r.name, 'sidecar', 'CONT');
    }
    await this.reviveDead('the final heal');
    for (const r of this.info.replicas) await this.armFaults(r, { corruptServedFiles: 0 }).catch(() => undefined);
  }

  async settled(): Promise<boolean> {
    const replicas = this.replicas;
    const settled = await Promise.all(
      this.info.replicas.map(async (r) => {
        try {
          const res = await fetch(`${r.http}/_chorus/status`, { signal: AbortSignal.timeout(5_000) });
          return res.ok && sidecarSettled((await res.json()) as AdminStatus, replicas);
        } catch {
          return false;
        }
      }),
    );
    return settled.every(Boolean);
  }

  async reportedDuplicates(): Promise<Record<string, string[]>> {
    const statuses = await Promise.all(
      this.info.replicas.map(async (r) => {
        const res = await fetch(`${r.http}/_chorus/status`, { signal: AbortSignal.timeout(5_000) });
        if (!res.ok) throw new Error(`${r.name}'s status: ${res.status} ${await res.text()}`);
        return (await res.json()) as AdminStatus;
      }),
    );
    return reportedDuplicates(statuses);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await teardown(this.dir, this.network, this.mounts, this.options.keepDir);
    if (this.options.keepDir) this.log(`local backend: its logs are kept in ${this.dir} (the data disks are gone with their tmpfs)`);
  }

  private replica(name: string): ReplicaInfo {
    const r = this.info.replicas.find((x) => x.name === name);
    if (!r) throw new Error(`no replica ${name} (replicas: ${this.replicas.join(', ')})`);
    return r;
  }

  private async armFaults(r: ReplicaInfo, faults: Record<string, unknown>): Promise<void> {
    const outcome = await post(new URL(`${r.http}/_chorus/faults`), JSON.stringify(faults), 5_000);
    if (outcome.kind !== 'reply' || outcome.status !== 200) throw new Error(`arming faults on ${r.name} failed: ${outcome.kind === 'reply' ? outcome.body : outcome.error}`);
  }
}

/** POST with a deadline; tells a refused connection (nothing sent) from one that broke after sending. */
async function post(url: URL, body: string, timeoutMs: number): Promise<HttpOutcome> {
  try {
    const res = await fetch(url, { method: 'POST', body, signal: AbortSignal.timeout(timeoutMs) });
    return { kind: 'reply', status: res.status, body: await res.text(), errorCode: res.headers.get('x-chorus-error-code') };
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const code = cause?.code ?? (error as Error).name;
    // Refused or unreachable before a byte was written: the server cannot have acted on it.
    const sent = !['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH'].includes(code ?? '');
    return { kind: 'no-reply', sent, error: `${code}: ${cause?.message ?? (error as Error).message}` };
  }
}

/**
 * Fills the filesystem `filler` is on to the last page, or to `leaveBytes` short of full;
 * returns how many bytes the filler took. To the last page chunk by chunk, smaller and smaller:
 * what statfs reports free is not quite what a tmpfs lets one file take, and the processes on
 * it keep writing meanwhile.
 */
function fillDisk(filler: string, leaveBytes = 0): number {
  if (leaveBytes > 0) {
    // The sidecar and ClickHouse write too: a size measured a moment ago may no longer fit.
    for (let attempt = 1; ; attempt++) {
      const { bavail, bsize } = statfsSync(join(filler, '..'));
      const take = Math.floor((bavail * bsize - leaveBytes) / bsize) * bsize;
      if (take <= 0) return 0;
      if (tryRun(['fallocate', '-l', String(take), filler]) !== undefined) return take;
      rmSync(filler, { force: true });
      if (attempt === 10) throw new Error(`could not fill ${filler} to ${leaveBytes} bytes short of full`);
    }
  }
  let offset = 0;
  for (const chunk of [256 * 1024 ** 2, 16 * 1024 ** 2, 1024 ** 2, 64 * 1024, 4096]) {
    while (tryRun(['fallocate', '-o', String(offset), '-l', String(chunk), filler]) !== undefined) offset += chunk;
  }
  return offset;
}

function once(heal: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= heal());
}

async function teardown(dir: string, network: ChaosNetwork, mounts: string[], keepDir: boolean): Promise<void> {
  network.heal();
  if (existsSync(join(dir, 'cluster.json'))) {
    const info = readCluster(dir);
    for (const r of info.replicas) if (isAlive(r.pids.sidecar)) await devKill(dir, r.name, 'sidecar', 'CONT');
    await devDown(dir).catch(() => undefined);
  }
  network.destroy();
  for (const mount of mounts) tryRun(['umount', '-l', mount]);
  if (!keepDir) rmSync(dir, { recursive: true, force: true });
}

/**
 * One replica's data disk: a tmpfs holding ClickHouse's data and Chorus's state (one
 * filesystem, as one volume holds both in a pod: Chorus hard-links between them), linked where
 * devUp puts them. Logs stay outside, as a pod's go to its runtime and not to its volume: a
 * process that cannot write its log on a full disk is not what the fault means to show.
 */
function mountDataDisk(replicaDir: string, bytes: number, mounts: string[]): void {
  const disk = join(replicaDir, 'disk');
  mkdirSync(disk, { recursive: true });
  run(['mount', '-t', 'tmpfs', '-o', `size=${bytes}`, `chaos-${basename(replicaDir)}`, disk]);
  mounts.push(disk);
  mkdirSync(join(disk, 'clickhouse-data'));
  mkdirSync(join(disk, 'chorus'));
  mkdirSync(join(replicaDir, 'clickhouse'), { recursive: true });
  symlinkSync(join(disk, 'clickhouse-data'), join(replicaDir, 'clickhouse', 'data'));
  symlinkSync(join(disk, 'chorus'), join(replicaDir, 'chorus'));
}

/** Unmounts and removes what crashed runs left under the scratch dir (their owner pid is gone). */
function sweepStaleRuns(): void {
  ChaosNetwork.sweepStale(PREFIX);
  const root = scratchRoot();
  for (const entry of readdirSync(root)) {
    const owner = RUN_DIR.exec(entry)?.[1];
    if (owner === undefined || isAlive(Number(owner))) continue;
    killStaleProcesses(join(root, entry));
    const mountsList = tryRun(['findmnt', '-rn', '-o', 'TARGET']) ?? '';
    for (const target of mountsList.split('\n').filter((t) => t.startsWith(join(root, entry) + '/'))) tryRun(['umount', '-l', target]);
    rmSync(join(root, entry), { recursive: true, force: true });
  }
}

/** SIGKILLs the process groups a crashed run's cluster.json names, if they still run from its directory. */
function killStaleProcesses(runDir: string): void {
  let info: ClusterInfo;
  try {
    info = readCluster(runDir);
  } catch {
    return;
  }
  const pids = [info.zookeeperPid, ...info.replicas.flatMap((r) => [r.pids.sidecar, r.pids.clickhouse])].filter((pid) => pid > 0 && isAlive(pid));
  for (const pid of pids) {
    // A pid is reused once its process is gone: only one whose command line names the run's directory is ours.
    const cmdline = tryRead(`/proc/${pid}/cmdline`)?.replace(/\0/g, ' ') ?? '';
    if (cmdline.includes(runDir)) signalGroup(pid, 'SIGKILL');
  }
}

function tryRead(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}
