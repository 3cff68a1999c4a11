import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/dev/cluster.js';
import { FAULT_KINDS, type ChaosBackend, type Fault, type FaultKind, type HttpOutcome, type HttpRequest, type Injected } from './backend.js';
import {
  AGENT_LABEL,
  CONTAINERS,
  KIND_UNSUPPORTED_FAULTS,
  UnsupportedFaultError,
  agentManifest,
  agentName,
  clickhouseQueryArgv,
  parseClusterView,
  parseHttpOutput,
  parseOverlayNames,
  planClearAll,
  planFault,
  podHttpArgv,
  type ClusterView,
  type OverlayNames,
  type PlanContext,
} from './kind-plan.js';
import { describeFailure, kubectl, runCommand, runOrThrow, type Argv, type CommandResult, type KubeTarget } from './kubectl.js';
import type { SlowOptions } from './network.js';
import { reportedDuplicates, sidecarSettled } from './settled.js';

/*
 * The chaos scenarios on the kind overlay (k8s/overlays/kind: ZooKeeper and one shard of 3
 * replicas), driven through kubectl. test/k8s/lib.sh does what kind.sh does (preflight, cluster,
 * image, overlay, waiting for the shard) and names the overlay's objects; kind-plan.ts says
 * which commands make each fault; this file runs them.
 *
 * Clients reach a replica as `kubectl exec` into its chorus container and a request to
 * 127.0.0.1 from there: the exec goes through the kubelet, not the pod network, so partitions
 * cut peers and ZooKeeper, never the clients, as on the local backend. Each request costs an
 * exec (a few hundred ms): kind runs are for the faults, not for throughput.
 *
 * What differs from the local backend, because Kubernetes restarts what dies: a killed sidecar,
 * ClickHouse or ZooKeeper is started again by the kubelet, after its restart back-off (10 s,
 * doubling up to 5 min for a container killed again and again), not when the fault ends; and a
 * sidecar paused longer than its liveness probe allows (6 x 10 s) is restarted too.
 */

export class KindUnavailableError extends Error {
  constructor(detail: string) {
    super(`the kind backend cannot run here: ${detail}`);
    this.name = 'KindUnavailableError';
  }
}

export interface KindBackendOptions {
  /** The kind overlay runs clickhouse/clickhouse-server; 'chdb' is the local backend's only. */
  clickhouse?: 'server' | 'chdb';
  /** The overlay's shard has 3 replicas (lib.sh's SHARD_PODS); another number is refused. */
  replicas?: number;
  /** Leases are the overlay's config (CHORUS_ZOOKEEPER_LEASE_SIZE), not the run's: a size here is refused. */
  leaseSize?: number;
  /** The kind cluster to create or reuse (lib.sh's KIND_CLUSTER_NAME). Default: $KIND_CLUSTER_NAME, else chorus. */
  clusterName?: string;
  /** Default kind-<clusterName>. Another context only with deploy false. */
  kubeContext?: string;
  /** Default the overlay's (chorus). Another namespace only with deploy false. */
  namespace?: string;
  /**
   * Default true: what kind.sh does before its checks (lib.sh's k8s_preflight, kind_cluster_up,
   * build_and_load_image, apply_kind_overlay, wait_for_shard_ready). False: the context already
   * runs the overlay; only kubectl is needed.
   */
  deploy?: boolean;
  /** Keep a kind cluster this backend created when it closes (one it found is always kept). */
  keepCluster?: boolean;
  /** What slow-network does to a replica's link. */
  slow?: SlowOptions;
  /** How many served parts corrupt-parts corrupts. */
  corruptServedFiles?: number;
  /** The environment of every command (PATH decides which kubectl, kind and docker). */
  env?: NodeJS.ProcessEnv;
  /** Progress of the long steps (the cluster's creation, the image build); default stderr. */
  log?: (line: string) => void;
}

const LIB_SH = join(PACKAGE_ROOT, 'test', 'k8s', 'lib.sh');
const AGENT_SCRIPT = join(PACKAGE_ROOT, 'test', 'chaos', 'kind-agent.sh');

const DEFAULT_SLOW: SlowOptions = { rateKbit: 1_000, latencyMs: 500, lossPercent: 5 };
// Every part served while the fault lasts; healing sets it back to 0.
const DEFAULT_CORRUPT_SERVED_FILES = 1_000_000;
const KUBECTL_TIMEOUT_MS = 60_000;
// What a kubectl exec adds to a request's own timeout before we give up on it.
const EXEC_SLACK_MS = 20_000;
const DEPLOY_TIMEOUT_MS = 45 * 60_000;
const AGENT_READY_TIMEOUT = '180s';
// Longer than the kubelet's longest restart back-off (5 min).
const HEAL_TIMEOUT_MS = 10 * 60_000;
const HEAL_POLL_MS = 2_000;

const corruptPartsNeedsTestFaults = (statefulSet: string) =>
  `the sidecars run without testFaults, so their fault hook refuses (the kind overlay does not enable it; \`kubectl set env statefulset/${statefulSet} -c ${CONTAINERS.sidecar} CHORUS_TEST_FAULTS=true\` does, for a test cluster)`;

interface Settings {
  kube: KubeTarget;
  names: OverlayNames;
  clusterName: string;
  /** This backend created the kind cluster (and deletes it on close unless keepCluster). */
  createdCluster: boolean;
  keepCluster: boolean;
  slow: SlowOptions;
  corruptServedFiles: number;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
}

export class KindBackend implements ChaosBackend {
  readonly name = 'kind';
  readonly replicas: readonly string[];
  supportedFaults: ReadonlySet<FaultKind> = new Set();
  /** Why each fault kind outside supportedFaults is not supported here, for the runner to print. */
  unsupportedFaults: ReadonlyMap<FaultKind, string> = new Map();
  private readonly agentScript = readFileSync(AGENT_SCRIPT, 'utf8');
  private readonly active = new Set<Injected>();
  private testFaults = false;
  private closed = false;

  private constructor(private readonly settings: Settings) {
    this.replicas = settings.names.replicaPods;
  }

  /** Fails before creating anything, with a KindUnavailableError naming what is missing, where the backend cannot run. */
  static async start(options: KindBackendOptions = {}): Promise<KindBackend> {
    const env = options.env ?? process.env;
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    if (options.clickhouse === 'chdb') throw new KindUnavailableError('the kind overlay runs clickhouse/clickhouse-server; chdb is for the local backend');
    if (options.leaseSize) throw new KindUnavailableError('the kind overlay sets the sidecars\' config: turn leases on there (CHORUS_ZOOKEEPER_LEASE_SIZE on the chorus container), not with --lease-size');
    const names = parseOverlayNames(await runLib('print_overlay_names', { env, timeoutMs: KUBECTL_TIMEOUT_MS }).then(expectSuccess));
    if (options.replicas !== undefined && options.replicas !== names.replicaPods.length) {
      throw new KindUnavailableError(`the kind overlay runs ${names.replicaPods.length} replicas (${names.replicaPods.join(', ')}), not ${options.replicas}`);
    }
    // Empty counts as unset, as in lib.sh (${KIND_CLUSTER_NAME:-chorus}).
    const clusterName = options.clusterName ?? (env.KIND_CLUSTER_NAME || 'chorus');
    const deploy = options.deploy ?? true;
    const kube: KubeTarget = { context: options.kubeContext ?? `kind-${clusterName}`, namespace: options.namespace ?? names.namespace };
    if (deploy && (kube.context !== `kind-${clusterName}` || kube.namespace !== names.namespace)) {
      throw new KindUnavailableError(`deploy applies the kind overlay to context kind-${clusterName}, namespace ${names.namespace}; for ${kube.context}, namespace ${kube.namespace}, pass deploy: false`);
    }
    const libEnv = { ...env, KIND_CLUSTER_NAME: clusterName };

    let createdCluster = false;
    if (deploy) {
      const preflight = await runLib('k8s_preflight', { env: libEnv, timeoutMs: KUBECTL_TIMEOUT_MS });
      // lib.sh's own words (one line, "kind-backend: what is missing: what to do"), without our name.
      if (preflight.code !== 0) throw new KindUnavailableError(oneLine(preflight).replace(/^kind-backend: /, ''));
      createdCluster = await deployOverlay(libEnv, log, options.keepCluster ?? false);
    } else {
      await checkCluster(kube, names, env);
    }

    const backend = new KindBackend({
      kube,
      names,
      clusterName,
      createdCluster,
      keepCluster: options.keepCluster ?? false,
      slow: options.slow ?? DEFAULT_SLOW,
      corruptServedFiles: options.corruptServedFiles ?? DEFAULT_CORRUPT_SERVED_FILES,
      env: libEnv,
      log,
    });
    try {
      await backend.setUp();
    } catch (error) {
      await backend.close().catch(() => {});
      throw error;
    }
    return backend;
  }

  async chorus(request: HttpRequest): Promise<HttpOutcome> {
    const argv = podHttpArgv(this.settings.kube, this.replica(request.replica), {
      method: 'POST',
      path: '/',
      params: { ...request.params, query: request.query },
      timeoutMs: request.timeoutMs,
    });
    return parseHttpOutput(await this.run(argv, { input: request.body ?? '', timeoutMs: request.timeoutMs + EXEC_SLACK_MS }));
  }

  async clickhouse(replica: string, sql: string): Promise<string> {
    const result = await this.run(clickhouseQueryArgv(this.settings.kube, this.replica(replica), sql), { timeoutMs: 2 * KUBECTL_TIMEOUT_MS });
    if (result.code !== 0) throw new Error(`ClickHouse of ${replica}: ${describeFailure(result)}`);
    return result.stdout;
  }

  async onEvery(sql: string): Promise<void> {
    for (const replica of this.replicas) await this.clickhouse(replica, sql);
  }

  async inject(fault: Fault): Promise<Injected> {
    if (this.closed) throw new Error('the kind backend is closed');
    if (!this.supportedFaults.has(fault.kind)) throw new UnsupportedFaultError(fault.kind, this.unsupportedFaults.get(fault.kind) ?? 'unknown fault');
    const plan = planFault(fault, this.planContext(await this.view()));
    const failures = (await Promise.all(plan.inject.map((argv) => this.run(argv)))).filter((result) => result.code !== 0);
    if (failures.length > 0) {
      await this.runAll(plan.heal);
      throw new Error(`injecting ${fault.kind} on ${fault.target}: ${failures.map(describeFailure).join('; ')}`);
    }
    let healing: Promise<void> | undefined;
    const injected: Injected = {
      detail: plan.detail,
      heal: () => {
        healing ??= this.runAll(plan.heal).then((failed) => {
          this.active.delete(injected);
          if (failed.length > 0) throw new Error(`healing ${fault.kind} on ${fault.target}: ${failed.map(describeFailure).join('; ')}`);
        });
        return healing;
      },
    };
    this.active.add(injected);
    return injected;
  }

  async healAll(): Promise<void> {
    for (const injected of [...this.active]) await injected.heal().catch(() => {});
    // Whatever an earlier run or a failed heal left: every pod's rules and qdiscs, paused sidecars, armed corruption.
    await this.runAll(planClearAll(this.planContext(await this.view()), { testFaults: this.testFaults }));
    const deadline = Date.now() + HEAL_TIMEOUT_MS;
    for (;;) {
      const view = await this.view().catch(() => undefined);
      const notReady = view === undefined ? ['(no pod list)'] : this.notReady(view);
      if (notReady.length === 0) return;
      if (Date.now() > deadline) throw new Error(`pods not ready ${HEAL_TIMEOUT_MS / 1000}s after healing: ${notReady.join(', ')}`);
      await sleep(HEAL_POLL_MS);
    }
  }

  async reportedDuplicates(): Promise<Record<string, string[]>> {
    const statuses = await Promise.all(
      this.replicas.map(async (replica) => {
        const outcome = parseHttpOutput(await this.run(podHttpArgv(this.settings.kube, replica, { method: 'GET', path: '/_chorus/status', timeoutMs: 10_000 }), { timeoutMs: 10_000 + EXEC_SLACK_MS }));
        if (outcome.kind !== 'reply' || outcome.status !== 200) throw new Error(`${replica}'s status: ${outcome.kind === 'reply' ? outcome.status : outcome.error}`);
        return JSON.parse(outcome.body) as Parameters<typeof reportedDuplicates>[0][number];
      }),
    );
    return reportedDuplicates(statuses);
  }

  async settled(): Promise<boolean> {
    const statuses = await Promise.all(
      this.replicas.map(async (replica) => {
        const outcome = parseHttpOutput(await this.run(podHttpArgv(this.settings.kube, replica, { method: 'GET', path: '/_chorus/status', timeoutMs: 10_000 }), { timeoutMs: 10_000 + EXEC_SLACK_MS }));
        if (outcome.kind !== 'reply' || outcome.status !== 200) return false;
        try {
          return sidecarSettled(JSON.parse(outcome.body) as Parameters<typeof sidecarSettled>[0], this.replicas);
        } catch {
          // A reply cut short by a restart: not settled yet.
          return false;
        }
      }),
    );
    return statuses.every(Boolean);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const { createdCluster, keepCluster, log, env } = this.settings;
    if (createdCluster && !keepCluster) {
      const down = await runLib('kind_cluster_down', { env, timeoutMs: 5 * 60_000, onStderr: (chunk) => log(chunk.trimEnd()) });
      if (down.code !== 0) throw new Error(`deleting kind cluster ${this.settings.clusterName}: ${describeFailure(down)}`);
      return;
    }
    for (const injected of [...this.active]) await injected.heal().catch(() => {});
    const view = await this.view().catch(() => undefined);
    if (view) await this.runAll(planClearAll(this.planContext(view), { testFaults: this.testFaults }));
    const labels = Object.entries(AGENT_LABEL).map(([key, value]) => `${key}=${value}`).join(',');
    await this.run(kubectl(this.settings.kube, 'delete', 'pods', '-l', labels, '--ignore-not-found', '--wait=false'));
    if (createdCluster) log(`kind cluster ${this.settings.clusterName} kept (keepCluster): kind delete cluster --name ${this.settings.clusterName} removes it`);
  }

  /** Starts an agent on every node of the shard and of ZooKeeper, and finds out whether the sidecars' fault hooks are on. */
  private async setUp(): Promise<void> {
    const view = await this.view();
    const missing = this.replicas.filter((name) => !view.replicas.some((pod) => pod.name === name));
    if (missing.length > 0) throw new Error(`replica pods missing in namespace ${this.settings.kube.namespace}: ${missing.join(', ')}`);
    const image = view.replicas[0]?.images[CONTAINERS.sidecar];
    if (!image) throw new Error(`${this.replicas[0]} has no ${CONTAINERS.sidecar} container`);
    const nodes = [...new Set([...view.replicas, ...view.zookeeper].map((pod) => pod.node).filter(Boolean))];
    const list = { apiVersion: 'v1', kind: 'List', items: nodes.map((node) => agentManifest(node, image)) };
    await runOrThrow(kubectl(this.settings.kube, 'apply', '-f', '-'), { input: JSON.stringify(list), timeoutMs: KUBECTL_TIMEOUT_MS, env: this.settings.env });
    await runOrThrow(kubectl(this.settings.kube, 'wait', '--for=condition=Ready', ...nodes.map((node) => `pod/${agentName(node)}`), `--timeout=${AGENT_READY_TIMEOUT}`), {
      timeoutMs: 4 * KUBECTL_TIMEOUT_MS,
      env: this.settings.env,
    });

    // The hook answers 200 only where testFaults is on; {} arms nothing.
    const probes = await Promise.all(this.replicas.map((replica) => this.run(podHttpArgv(this.settings.kube, replica, { method: 'POST', path: '/_chorus/faults', timeoutMs: 10_000, body: '{}', strict: true }))));
    this.testFaults = probes.every((probe) => probe.code === 0);
    const unsupported = new Map(KIND_UNSUPPORTED_FAULTS);
    if (!this.testFaults) unsupported.set('corrupt-parts', corruptPartsNeedsTestFaults(this.settings.names.shardStatefulSet));
    this.unsupportedFaults = unsupported;
    this.supportedFaults = new Set(FAULT_KINDS.filter((kind) => !unsupported.has(kind)));
  }

  private async view(): Promise<ClusterView> {
    return parseClusterView(await runOrThrow(kubectl(this.settings.kube, 'get', 'pods', '-o', 'json'), { timeoutMs: KUBECTL_TIMEOUT_MS, env: this.settings.env }), this.settings.names);
  }

  private notReady(view: ClusterView): string[] {
    const present = [...view.replicas, ...view.zookeeper];
    const absent = this.replicas.filter((name) => !view.replicas.some((pod) => pod.name === name));
    return [...absent, ...present.filter((pod) => !pod.ready).map((pod) => pod.name)];
  }

  private planContext(view: ClusterView): PlanContext {
    return {
      kube: this.settings.kube,
      view,
      agentScript: this.agentScript,
      zookeeperPort: this.settings.names.zookeeperPort,
      slow: this.settings.slow,
      corruptServedFiles: this.settings.corruptServedFiles,
    };
  }

  private replica(name: string): string {
    if (!this.replicas.includes(name)) throw new Error(`no replica ${name} (replicas: ${this.replicas.join(', ')})`);
    return name;
  }

  private run(argv: Argv, options: { input?: string; timeoutMs?: number } = {}): Promise<CommandResult> {
    return runCommand(argv, { timeoutMs: options.timeoutMs ?? KUBECTL_TIMEOUT_MS, input: options.input, env: this.settings.env });
  }

  /** Runs every argv, all at once; returns the failed ones. */
  private async runAll(argvs: readonly Argv[]): Promise<CommandResult[]> {
    return (await Promise.all(argvs.map((argv) => this.run(argv)))).filter((result) => result.code !== 0);
  }
}

/** `bash -c 'source lib.sh; SCRIPT'`, with $0 kind-backend (lib.sh's messages start with it). */
function runLib(script: string, options: { env: NodeJS.ProcessEnv; timeoutMs: number; onStderr?: (chunk: string) => void }): Promise<CommandResult> {
  return runCommand(['bash', '-c', `source "$1"\n${script}`, 'kind-backend', LIB_SH], { ...options, cwd: PACKAGE_ROOT });
}

/** kind.sh's set-up, by lib.sh's own functions; true when it created the cluster. On failure, the diagnostics, and the cluster deleted if it made it. */
async function deployOverlay(env: NodeJS.ProcessEnv, log: (line: string) => void, keepCluster: boolean): Promise<boolean> {
  const script = `set -euo pipefail
kind_cluster_up >&2
echo "KIND_CLUSTER_CREATED=$KIND_CLUSTER_CREATED"
build_and_load_image >&2
apply_kind_overlay >&2
wait_for_shard_ready >&2 || { dump_diagnostics; exit 1; }`;
  const result = await runLib(script, { env, timeoutMs: DEPLOY_TIMEOUT_MS, onStderr: (chunk) => log(chunk.trimEnd()) });
  const created = /^KIND_CLUSTER_CREATED=1$/m.test(result.stdout);
  if (result.code === 0) return created;
  if (created && !keepCluster) await runLib('kind_cluster_down', { env, timeoutMs: 5 * 60_000, onStderr: (chunk) => log(chunk.trimEnd()) });
  throw new Error(`setting up the kind overlay failed: ${result.timedOut ? `not done within ${DEPLOY_TIMEOUT_MS / 60_000} min` : `exit ${result.code}`} (its log is above)`);
}

/** Without deploy: kubectl, the context and the shard's StatefulSet must be there. */
async function checkCluster(kube: KubeTarget, names: OverlayNames, env: NodeJS.ProcessEnv): Promise<void> {
  const contexts = await runCommand(['kubectl', 'config', 'get-contexts', '-o', 'name'], { env, timeoutMs: KUBECTL_TIMEOUT_MS });
  if (contexts.spawnError) throw new KindUnavailableError('kubectl is missing: install it (https://kubernetes.io/docs/tasks/tools/)');
  if (contexts.code !== 0) throw new KindUnavailableError(`kubectl config get-contexts failed: ${oneLine(contexts)}`);
  const known = contexts.stdout.split('\n').map((line) => line.trim()).filter(Boolean);
  if (!known.includes(kube.context)) {
    throw new KindUnavailableError(
      `kubectl has no context ${kube.context} (it has: ${known.join(', ') || 'none'}): create the cluster (KEEP_CLUSTER=1 npm run kind, or deploy: true) or pass kubeContext`,
    );
  }
  const shard = await runCommand(kubectl(kube, 'get', 'statefulset', names.shardStatefulSet, '-o', 'name', '--request-timeout=20s'), { env, timeoutMs: KUBECTL_TIMEOUT_MS });
  if (shard.code !== 0) {
    throw new KindUnavailableError(`statefulset ${names.shardStatefulSet} is not reachable in namespace ${kube.namespace} of context ${kube.context} (is the kind overlay applied?): ${oneLine(shard)}`);
  }
}

function expectSuccess(result: CommandResult): string {
  if (result.spawnError) throw new KindUnavailableError(`bash is missing (${result.spawnError}): test/k8s/lib.sh needs it`);
  if (result.code !== 0) throw new Error(describeFailure(result));
  return result.stdout;
}

/** A failed command's message on one line: lib.sh's preflight writes exactly one. */
function oneLine(result: CommandResult): string {
  if (result.spawnError) return result.spawnError;
  if (result.timedOut) return `${result.argv[0]} gave no answer in time`;
  return (result.stderr.trim() || result.stdout.trim() || `exit ${result.code}`).split('\n').join(' ');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
