import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../src/dev/cluster.js';
import { FAULT_KINDS, type Fault, type FaultKind } from '../chaos/backend.js';
import { KindBackend, KindUnavailableError } from '../chaos/kind-backend.js';
import {
  KIND_FAULTS,
  UnsupportedFaultError,
  agentManifest,
  parseClusterView,
  parseHttpOutput,
  parseOverlayNames,
  planClearAll,
  planFault,
  type ClusterView,
  type OverlayNames,
  type PlanContext,
} from '../chaos/kind-plan.js';
import type { CommandResult } from '../chaos/kubectl.js';

/*
 * The kind backend without a cluster (none runs here): where it cannot run, start() says so at
 * once and touches nothing; and the kubectl commands each fault would run, from a made-up view
 * of the overlay's pods. test/chaos/kind-agent.test.ts runs the agent's ops on this machine.
 */

const BASH = execFileSync('sh', ['-c', 'command -v bash'], { encoding: 'utf8' }).trim();
const DOCKER_WITHOUT_ENGINE = 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?';

const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

/** A dir of stub executables (and bash, which the backend runs lib.sh with), to put on PATH. */
function stubs(scripts: Record<string, string>): { dir: string; calls: () => string[] } {
  const dir = mkdtempSync(join(tmpdir(), 'chorus-kind-backend-'));
  scratch.push(dir);
  const log = join(dir, 'calls.log');
  symlinkSync(BASH, join(dir, 'bash'));
  for (const [name, body] of Object.entries(scripts)) {
    writeFileSync(join(dir, name), `#!${BASH}\necho "${name} $*" >> '${log}'\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  }
  return { dir, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []) };
}

async function startFailure(options: Parameters<typeof KindBackend.start>[0]): Promise<{ error: unknown; seconds: number }> {
  const started = Date.now();
  try {
    const backend = await KindBackend.start(options);
    await backend.close();
    return { error: undefined, seconds: (Date.now() - started) / 1000 };
  } catch (error) {
    return { error, seconds: (Date.now() - started) / 1000 };
  }
}

describe('KindBackend.start where kind cannot run', () => {
  const dockerClient = spawnSync('sh', ['-c', 'command -v docker']).status === 0;
  const engineReachable = dockerClient && spawnSync('docker', ['info'], { stdio: 'ignore', timeout: 30_000 }).status === 0;
  it.skipIf(!dockerClient || engineReachable)("fails at once with this machine's docker client, which reaches no engine, before any kind or kubectl call", async () => {
    const recorded = stubs({ kind: 'exit 0', kubectl: 'exit 0' });
    const { error, seconds } = await startFailure({ env: { ...process.env, PATH: `${recorded.dir}:${process.env.PATH}` } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toMatch(/^the kind backend cannot run here: docker cannot reach a Docker engine \(docker info: .*\): start the Docker daemon/);
    expect(seconds).toBeLessThan(30);
    expect(recorded.calls()).toEqual([]);
  });

  it('names the Docker engine when docker info fails', async () => {
    const recorded = stubs({ docker: `[ "$1" = info ] && { echo '${DOCKER_WITHOUT_ENGINE}' >&2; exit 1; }; exit 0`, kind: 'exit 0', kubectl: 'exit 0' });
    const { error } = await startFailure({ env: { ...process.env, PATH: recorded.dir } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toContain(`docker cannot reach a Docker engine (docker info: ${DOCKER_WITHOUT_ENGINE})`);
    expect(recorded.calls()).toEqual(['docker info']);
  });

  it('names kind, and where to get it, when kind is missing', async () => {
    const recorded = stubs({ docker: 'exit 0', kubectl: 'exit 0' });
    const { error } = await startFailure({ env: { ...process.env, PATH: recorded.dir } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toMatch(/kind is missing: install it \(https:\/\/kind\.sigs\.k8s\.io\//);
    expect(recorded.calls()).toEqual(['docker info']);
  });

  it('without deploy, names the missing kubectl context and the ones there are', async () => {
    const recorded = stubs({ kubectl: 'echo kind-other; echo minikube' });
    const { error } = await startFailure({ deploy: false, env: { ...process.env, PATH: recorded.dir, KIND_CLUSTER_NAME: '' } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toMatch(/kubectl has no context kind-chorus \(it has: kind-other, minikube\)/);
    expect(recorded.calls()).toEqual(['kubectl config get-contexts -o name']);
  });

  it('without deploy, names kubectl when it is missing', async () => {
    const recorded = stubs({});
    const { error } = await startFailure({ deploy: false, env: { ...process.env, PATH: recorded.dir } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toMatch(/kubectl is missing: install it/);
  });

  it('without deploy, says when the context does not run the overlay', async () => {
    const recorded = stubs({ kubectl: `[ "$1" = config ] && { echo kind-chorus; exit 0; }; echo 'Error from server (NotFound): namespaces "chorus" not found' >&2; exit 1` });
    const { error } = await startFailure({ deploy: false, env: { ...process.env, PATH: recorded.dir, KIND_CLUSTER_NAME: '' } });
    expect(error).toBeInstanceOf(KindUnavailableError);
    expect((error as Error).message).toMatch(/statefulset clickhouse-shard1 is not reachable in namespace chorus of context kind-chorus \(is the kind overlay applied\?\): Error from server \(NotFound\)/);
  });

  it('refuses what the overlay does not run, before running anything', async () => {
    const recorded = stubs({ docker: 'exit 0', kind: 'exit 0', kubectl: 'exit 0' });
    const env = { ...process.env, PATH: recorded.dir };
    expect((await startFailure({ clickhouse: 'chdb', env })).error).toBeInstanceOf(KindUnavailableError);
    const replicas = await startFailure({ replicas: 5, env });
    expect((replicas.error as Error).message).toMatch(/runs 3 replicas \(clickhouse-shard1-0, clickhouse-shard1-1, clickhouse-shard1-2\), not 5/);
    expect((await startFailure({ kubeContext: 'prod', env })).error).toBeInstanceOf(KindUnavailableError);
    expect(recorded.calls()).toEqual([]);
  });
});

describe("lib.sh's names of the overlay", () => {
  it('are what the backend reads', () => {
    const printed = execFileSync(BASH, ['-c', 'source "$1"; print_overlay_names', 'test', join(PACKAGE_ROOT, 'test', 'k8s', 'lib.sh')], { encoding: 'utf8' });
    expect(parseOverlayNames(printed)).toEqual({
      namespace: 'chorus',
      shardStatefulSet: 'clickhouse-shard1',
      replicaPods: ['clickhouse-shard1-0', 'clickhouse-shard1-1', 'clickhouse-shard1-2'],
      zookeeperStatefulSet: 'zookeeper',
      zookeeperPort: 2181,
    });
  });
});

const NAMES: OverlayNames = {
  namespace: 'chorus',
  shardStatefulSet: 'clickhouse-shard1',
  replicaPods: ['clickhouse-shard1-0', 'clickhouse-shard1-1', 'clickhouse-shard1-2'],
  zookeeperStatefulSet: 'zookeeper',
  zookeeperPort: 2181,
};

/** What `kubectl get pods -o json` says of a pod, trimmed to what the backend reads. */
function podJson(name: string, owner: string, index: number, containers: string[]) {
  return {
    metadata: { name, uid: `uid-${name}`, ownerReferences: [{ kind: 'StatefulSet', name: owner }] },
    spec: { nodeName: `chorus-worker${index + 1}`, containers: containers.map((container) => ({ name: container, image: `${container}:image` })) },
    status: {
      podIP: `10.244.${index + 1}.${owner === 'zookeeper' ? 20 : 10}`,
      conditions: [{ type: 'Ready', status: 'True' }],
      containerStatuses: containers.map((container) => ({ name: container, containerID: `containerd://${container}-${name}` })),
    },
  };
}

const POD_LIST = JSON.stringify({
  items: [
    // Listed out of order, with someone else's pod among them.
    ...[2, 0, 1].map((i) => podJson(`clickhouse-shard1-${i}`, 'clickhouse-shard1', i, ['clickhouse', 'chorus'])),
    { metadata: { name: 'chorus-schema-abcde', uid: 'x', ownerReferences: [{ kind: 'Job', name: 'chorus-schema' }] } },
    ...[1, 0, 2].map((i) => podJson(`zookeeper-${i}`, 'zookeeper', i, ['zookeeper'])),
  ],
});

describe('parseClusterView', () => {
  it("takes the shard's pods in the overlay's order and ZooKeeper's by name, with their node, IP and container ids", () => {
    const view = parseClusterView(POD_LIST, NAMES);
    expect(view.replicas.map((pod) => pod.name)).toEqual(NAMES.replicaPods);
    expect(view.zookeeper.map((pod) => pod.name)).toEqual(['zookeeper-0', 'zookeeper-1', 'zookeeper-2']);
    expect(view.replicas[1]).toEqual({
      name: 'clickhouse-shard1-1',
      uid: 'uid-clickhouse-shard1-1',
      node: 'chorus-worker2',
      ip: '10.244.2.10',
      ready: true,
      containerIds: { clickhouse: 'clickhouse-clickhouse-shard1-1', chorus: 'chorus-clickhouse-shard1-1' },
      images: { clickhouse: 'clickhouse:image', chorus: 'chorus:image' },
    });
  });
});

describe('the commands of each fault', () => {
  const SCRIPT = '<kind-agent.sh>';
  const view: ClusterView = parseClusterView(POD_LIST, NAMES);
  const ctx: PlanContext = {
    kube: { context: 'kind-chorus', namespace: 'chorus' },
    view,
    agentScript: SCRIPT,
    zookeeperPort: 2181,
    slow: { rateKbit: 1000, latencyMs: 500, lossPercent: 5 },
    corruptServedFiles: 1000,
  };
  const KUBECTL = ['kubectl', '--context', 'kind-chorus', '-n', 'chorus'];
  const onNode = (worker: number, op: string, ...args: string[]) => [...KUBECTL, 'exec', `chorus-chaos-agent-chorus-worker${worker}`, '-c', 'agent', '--', 'chroot', '/host', 'bash', '-c', SCRIPT, 'kind-agent', op, ...args];
  const inSidecar = (replica: number, signal: string) => [...KUBECTL, 'exec', `clickhouse-shard1-${replica}`, '-c', 'chorus', '--', 'bash', '-c', SCRIPT, 'kind-agent', 'signal-sidecar', signal];
  const replicaIp = (i: number) => `10.244.${i + 1}.10`;
  const zookeeperIp = (i: number) => `10.244.${i + 1}.20`;
  const fault = (kind: FaultKind, extra: Partial<Fault> = {}): Fault => ({ kind, target: 'clickhouse-shard1-0', durationMs: 5_000, ...extra });

  it('kill-sidecar: SIGKILL to the sidecar from its own container; the kubelet restarts it, so nothing to heal', () => {
    expect(planFault(fault('kill-sidecar'), ctx)).toMatchObject({ inject: [inSidecar(0, 'KILL')], heal: [] });
  });

  it('pause-sidecar: SIGSTOP, healed by SIGCONT', () => {
    expect(planFault(fault('pause-sidecar', { target: 'clickhouse-shard1-2' }), ctx)).toMatchObject({ inject: [inSidecar(2, 'STOP')], heal: [inSidecar(2, 'CONT')] });
  });

  it("kill-clickhouse: SIGKILL from the node's agent to the container's first process", () => {
    expect(planFault(fault('kill-clickhouse', { target: 'clickhouse-shard1-1' }), ctx)).toMatchObject({ inject: [onNode(2, 'kill-container', 'clickhouse-clickhouse-shard1-1')], heal: [] });
  });

  it('restart-zookeeper: every ZooKeeper server killed from its node', () => {
    expect(planFault(fault('restart-zookeeper'), ctx).inject).toEqual([0, 1, 2].map((i) => onNode(i + 1, 'kill-container', `zookeeper-zookeeper-${i}`)));
  });

  it.each(['partition-zookeeper', 'expire-zookeeper-session'] as const)('%s: port 2181 cut both ways, where the packets arrive, and only that port', (kind) => {
    const plan = planFault(fault(kind, { target: 'clickhouse-shard1-1' }), ctx);
    const rules = [
      ...[0, 1, 2].map((i) => [2, 'uid-clickhouse-shard1-1', '-s', zookeeperIp(i), '-p', 'tcp', '--sport', '2181'] as const),
      ...[0, 1, 2].map((i) => [i + 1, `uid-zookeeper-${i}`, '-s', replicaIp(1), '-p', 'tcp', '--dport', '2181'] as const),
    ];
    expect(plan.inject).toEqual(rules.map(([worker, ...rule]) => onNode(worker, 'drop', ...rule)));
    expect(plan.heal).toEqual(rules.map(([worker, ...rule]) => onNode(worker, 'undrop', ...rule)));
  });

  it('partition-replica: the target and each peer drop what arrives from the other', () => {
    const plan = planFault(fault('partition-replica'), ctx);
    const rules = [
      [1, 'uid-clickhouse-shard1-0', '-s', replicaIp(1)],
      [1, 'uid-clickhouse-shard1-0', '-s', replicaIp(2)],
      [2, 'uid-clickhouse-shard1-1', '-s', replicaIp(0)],
      [3, 'uid-clickhouse-shard1-2', '-s', replicaIp(0)],
    ] as const;
    expect(plan.inject).toEqual(rules.map(([worker, ...rule]) => onNode(worker, 'drop', ...rule)));
    expect(plan.heal).toEqual(rules.map(([worker, ...rule]) => onNode(worker, 'undrop', ...rule)));
  });

  it('partition-one-way: only the other replica drops what arrives from the target', () => {
    const plan = planFault(fault('partition-one-way', { other: 'clickhouse-shard1-2' }), ctx);
    expect(plan.inject).toEqual([onNode(3, 'drop', 'uid-clickhouse-shard1-2', '-s', replicaIp(0))]);
    expect(plan.heal).toEqual([onNode(3, 'undrop', 'uid-clickhouse-shard1-2', '-s', replicaIp(0))]);
    expect(() => planFault(fault('partition-one-way'), ctx)).toThrow(/needs fault.other/);
  });

  it("slow-network: tbf on the target's link both ways, random loss where packets arrive (not its loopback); heal removes just those", () => {
    const plan = planFault(fault('slow-network'), ctx);
    const random = ['-m', 'statistic', '--mode', 'random', '--probability', '0.05'];
    const loss = [
      [1, 'uid-clickhouse-shard1-0', '!', '-i', 'lo', ...random],
      [2, 'uid-clickhouse-shard1-1', '-s', replicaIp(0), ...random],
      [3, 'uid-clickhouse-shard1-2', '-s', replicaIp(0), ...random],
      ...[0, 1, 2].map((i) => [i + 1, `uid-zookeeper-${i}`, '-s', replicaIp(0), ...random]),
    ] as Array<[number, ...string[]]>;
    expect(plan.inject).toEqual([
      onNode(1, 'shape', 'uid-clickhouse-shard1-0', 'tbf', 'rate', '1000kbit', 'burst', '4096', 'latency', '500ms'),
      ...loss.map(([worker, ...rule]) => onNode(worker, 'drop', ...rule)),
    ]);
    expect(plan.heal).toEqual([onNode(1, 'unshape', 'uid-clickhouse-shard1-0'), ...loss.map(([worker, ...rule]) => onNode(worker, 'undrop', ...rule))]);
  });

  it("corrupt-parts: the sidecar's fault hook armed and disarmed from inside its container", () => {
    const plan = planFault(fault('corrupt-parts'), ctx);
    const post = (body: string) => [...KUBECTL, 'exec', 'clickhouse-shard1-0', '-c', 'chorus', '--', 'node', '-e', expect.stringContaining('fetch(url'), '--', 'POST', '/_chorus/faults', '{}', '10000', body, 'strict'];
    expect(plan.inject).toEqual([post('{"corruptServedFiles":1000}')]);
    expect(plan.heal).toEqual([post('{"corruptServedFiles":0}')]);
  });

  it('disk-full is refused, saying why', () => {
    expect(() => planFault(fault('disk-full'), ctx)).toThrow(UnsupportedFaultError);
    expect(() => planFault(fault('disk-full'), ctx)).toThrow(/local-path/);
  });

  it('has a plan for every fault kind it lists, and lists every kind but disk-full', () => {
    expect([...KIND_FAULTS].sort()).toEqual(FAULT_KINDS.filter((kind) => kind !== 'disk-full').sort());
    for (const kind of KIND_FAULTS) expect(planFault(fault(kind, { other: 'clickhouse-shard1-1' }), ctx).inject.length, kind).toBeGreaterThan(0);
  });

  it('refuses a replica it does not know', () => {
    expect(() => planFault(fault('kill-sidecar', { target: 'clickhouse-shard1-7' }), ctx)).toThrow(/no replica pod clickhouse-shard1-7/);
  });

  it('healAll clears every pod, continues every sidecar, and disarms corruption only where the hook is on', () => {
    const withoutHook = planClearAll(ctx, { testFaults: false });
    expect(withoutHook).toEqual([
      ...[0, 1, 2].map((i) => onNode(i + 1, 'clear', `uid-clickhouse-shard1-${i}`)),
      ...[0, 1, 2].map((i) => onNode(i + 1, 'clear', `uid-zookeeper-${i}`)),
      ...[0, 1, 2].map((i) => inSidecar(i, 'CONT')),
    ]);
    expect(planClearAll(ctx, { testFaults: true })).toHaveLength(withoutHook.length + 3);
  });

  it("runs the agent privileged, on the node, in the node's PID and network namespaces, with the node's root at /host", () => {
    expect(agentManifest('chorus-worker2', 'chorus:dev')).toMatchObject({
      metadata: { name: 'chorus-chaos-agent-chorus-worker2' },
      spec: {
        nodeName: 'chorus-worker2',
        hostPID: true,
        hostNetwork: true,
        containers: [{ image: 'chorus:dev', command: ['sleep', 'infinity'], securityContext: { privileged: true, runAsUser: 0 } }],
        volumes: [{ hostPath: { path: '/' } }],
      },
    });
  });
});

describe('parseHttpOutput', () => {
  const result = (stdout: string, extra: Partial<CommandResult> = {}): CommandResult => ({ argv: ['kubectl'], code: 0, stdout, stderr: '', timedOut: false, ...extra });

  it('a reply, with its error code', () => {
    expect(parseHttpOutput(result('sending\n{"status":503,"body":"not ready","errorCode":"CHORUS_NOT_READY"}\n'))).toEqual({ kind: 'reply', status: 503, body: 'not ready', errorCode: 'CHORUS_NOT_READY' });
  });

  it('refused: nothing was sent; a timeout or a reset: it may have been', () => {
    expect(parseHttpOutput(result('sending\n{"error":"connect ECONNREFUSED 127.0.0.1:8124","code":"ECONNREFUSED"}\n'))).toMatchObject({ kind: 'no-reply', sent: false });
    expect(parseHttpOutput(result('sending\n{"error":"The operation was aborted due to timeout","code":"TimeoutError"}\n'))).toMatchObject({ kind: 'no-reply', sent: true });
  });

  it('kubectl exec failing before the script ran: not sent; the container dying after "sending": sent', () => {
    expect(parseHttpOutput(result('', { code: 1, stderr: 'error: unable to upgrade connection: container not found ("chorus")' }))).toEqual({
      kind: 'no-reply',
      sent: false,
      error: 'error: unable to upgrade connection: container not found ("chorus")',
    });
    expect(parseHttpOutput(result('sending\n', { code: 137 }))).toMatchObject({ kind: 'no-reply', sent: true });
  });
});
