import { FAULT_KINDS, type Fault, type FaultKind, type HttpOutcome } from './backend.js';
import { kubectl, type Argv, type CommandResult, type KubeTarget } from './kubectl.js';
import { randomMatch, tbfQdisc, type SlowOptions } from './network.js';

/*
 * What the kind backend runs, as argv lists, from what the cluster looks like: pure, so that
 * a test checks every fault's commands without a cluster. kind-backend.ts reads the cluster
 * and runs the lists.
 *
 * Where each fault is made:
 *   kill-sidecar, pause-sidecar   kill -KILL / -STOP / -CONT of the sidecar's node process, from a
 *                                 shell in its own container (node is tini's child, not PID 1)
 *   kill-clickhouse,              SIGKILL to the container's first process from the node's chaos
 *   restart-zookeeper             agent: from inside the container it would be ignored (the
 *                                 server is PID 1 there). The kubelet starts it again, after
 *                                 its restart back-off, not when the fault ends.
 *   partitions, ZooKeeper cuts    iptables DROP in the pods' network namespaces (nsenter from the
 *                                 agent), where packets arrive, as the local backend does
 *   slow-network                  tbf on the pod's interface and its veth peer on the node,
 *                                 random loss (iptables statistic) where packets arrive
 *   corrupt-parts                 the sidecar's test fault hook (POST /_chorus/faults), when its
 *                                 sidecars run with testFaults (the kind overlay's do not)
 *   disk-full                     not on kind: the data volumes are directories of the node's
 *                                 disk (local-path), which is the Docker host's; filling one
 *                                 fills the host
 *
 * Why iptables and not NetworkPolicy: a policy cannot drop one direction only, nor a share of
 * packets; it is enforced for new connections (kind's kindnet, from kind 0.24, admits or
 * refuses a connection's first packet), so the established gossip streams and ZooKeeper
 * sessions a partition must break would go on; and kind before 0.24 does not enforce policies at all.
 */

/** The containers of the overlay's pods (k8s/base/shard, k8s/base/zookeeper). */
export const CONTAINERS = { clickhouse: 'clickhouse', sidecar: 'chorus', zookeeper: 'zookeeper' } as const;

/** Label of the agent pods, which close() deletes by it. */
export const AGENT_LABEL = { 'app.kubernetes.io/name': 'chorus-chaos-agent' } as const;

/** The faults the kind backend cannot make, and why. */
export const KIND_UNSUPPORTED_FAULTS: ReadonlyMap<FaultKind, string> = new Map([
  ['disk-full', "a data volume is a directory of the node's disk (local-path), which is the Docker host's: filling it would fill the host"],
]);

/** The faults the kind backend can make; corrupt-parts only where the sidecars run with testFaults. */
export const KIND_FAULTS: readonly FaultKind[] = FAULT_KINDS.filter((kind) => !KIND_UNSUPPORTED_FAULTS.has(kind));

export class UnsupportedFaultError extends Error {
  constructor(kind: FaultKind, why: string) {
    super(`the kind backend cannot inject ${kind}: ${why}`);
    this.name = 'UnsupportedFaultError';
  }
}

/** The overlay's names, as test/k8s/lib.sh's print_overlay_names writes them. */
export interface OverlayNames {
  namespace: string;
  shardStatefulSet: string;
  replicaPods: string[];
  zookeeperStatefulSet: string;
  zookeeperPort: number;
}

export function parseOverlayNames(text: string): OverlayNames {
  const values = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (match) values.set(match[1]!, [...(values.get(match[1]!) ?? []), match[2]!]);
  }
  const one = (key: string) => {
    const value = values.get(key)?.[0];
    if (!value) throw new Error(`lib.sh's print_overlay_names wrote no ${key}: ${JSON.stringify(text)}`);
    return value;
  };
  return {
    namespace: one('K8S_NAMESPACE'),
    shardStatefulSet: one('SHARD_STATEFULSET'),
    replicaPods: values.get('SHARD_POD') ?? [],
    zookeeperStatefulSet: one('ZOOKEEPER_STATEFULSET'),
    zookeeperPort: Number(one('ZOOKEEPER_CLIENT_PORT')),
  };
}

export interface PodView {
  name: string;
  uid: string;
  node: string;
  ip: string;
  ready: boolean;
  /** Container name -> the runtime's container id without its scheme (containerd://). */
  containerIds: Record<string, string>;
  /** Container name -> image, as the pod spec has it. */
  images: Record<string, string>;
}

export interface ClusterView {
  /** The shard's pods, in the order of OverlayNames.replicaPods (those that exist). */
  replicas: PodView[];
  zookeeper: PodView[];
}

interface PodJson {
  metadata?: { name?: string; uid?: string; ownerReferences?: Array<{ kind?: string; name?: string }> };
  spec?: { nodeName?: string; containers?: Array<{ name?: string; image?: string }> };
  status?: { podIP?: string; conditions?: Array<{ type?: string; status?: string }>; containerStatuses?: Array<{ name?: string; containerID?: string }> };
}

/** The replica and ZooKeeper pods out of `kubectl get pods -o json`. */
export function parseClusterView(podListJson: string, names: OverlayNames): ClusterView {
  const items = (JSON.parse(podListJson) as { items?: PodJson[] }).items ?? [];
  const ownedBy = (pod: PodJson, statefulSet: string) => (pod.metadata?.ownerReferences ?? []).some((owner) => owner.kind === 'StatefulSet' && owner.name === statefulSet);
  const view = (pod: PodJson): PodView => ({
    name: pod.metadata?.name ?? '',
    uid: pod.metadata?.uid ?? '',
    node: pod.spec?.nodeName ?? '',
    ip: pod.status?.podIP ?? '',
    ready: (pod.status?.conditions ?? []).some((condition) => condition.type === 'Ready' && condition.status === 'True'),
    containerIds: Object.fromEntries((pod.status?.containerStatuses ?? []).filter((c) => c.name && c.containerID).map((c) => [c.name!, c.containerID!.replace(/^[a-z0-9-]+:\/\//, '')])),
    images: Object.fromEntries((pod.spec?.containers ?? []).filter((c) => c.name && c.image).map((c) => [c.name!, c.image!])),
  });
  const shard = new Map(items.filter((pod) => ownedBy(pod, names.shardStatefulSet)).map((pod) => [pod.metadata?.name ?? '', view(pod)]));
  return {
    replicas: names.replicaPods.flatMap((name) => shard.get(name) ?? []),
    zookeeper: items
      .filter((pod) => ownedBy(pod, names.zookeeperStatefulSet))
      .map(view)
      .sort((a, b) => a.name.localeCompare(b.name)),
  };
}

export function agentName(node: string): string {
  return `chorus-chaos-agent-${node}`;
}

/**
 * The agent of a node: privileged, in the node's PID and network namespaces, the node's root
 * filesystem at /host. It runs `image` (the sidecar's, already on every node of the shard: no pull) only for
 * sleep and chroot; its commands are the node's own (kind's nodes have iptables, tc, ip, nsenter).
 */
export function agentManifest(node: string, image: string): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: agentName(node), labels: { ...AGENT_LABEL } },
    spec: {
      nodeName: node,
      hostPID: true,
      hostNetwork: true,
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 0,
      enableServiceLinks: false,
      tolerations: [{ operator: 'Exists' }],
      containers: [
        {
          name: 'agent',
          image,
          imagePullPolicy: 'IfNotPresent',
          command: ['sleep', 'infinity'],
          securityContext: { privileged: true, runAsUser: 0, runAsNonRoot: false },
          volumeMounts: [{ name: 'host', mountPath: '/host' }],
        },
      ],
      volumes: [{ name: 'host', hostPath: { path: '/' } }],
    },
  };
}

export interface PlanContext {
  kube: KubeTarget;
  view: ClusterView;
  /** The text of kind-agent.sh. */
  agentScript: string;
  zookeeperPort: number;
  /** What slow-network does to the target's link. */
  slow: SlowOptions;
  /** How many served files corrupt-parts corrupts (reset to 0 when it heals). */
  corruptServedFiles: number;
}

export interface FaultPlan {
  /** For the timeline. */
  detail: string;
  inject: Argv[];
  /** Empty where nothing can be undone: a killed process is started again by the kubelet. */
  heal: Argv[];
}

export function planFault(fault: Fault, ctx: PlanContext): FaultPlan {
  const target = replica(ctx.view, fault.target);
  switch (fault.kind) {
    case 'kill-sidecar':
      return {
        detail: `kill -9 the sidecar's node process in ${target.name} (the kubelet restarts the container)`,
        inject: [sidecarSignal(ctx, target, 'KILL')],
        heal: [],
      };
    case 'pause-sidecar':
      return {
        detail: `SIGSTOP the sidecar's node process in ${target.name}`,
        inject: [sidecarSignal(ctx, target, 'STOP')],
        heal: [sidecarSignal(ctx, target, 'CONT')],
      };
    case 'kill-clickhouse':
      return {
        detail: `kill -9 ClickHouse in ${target.name} from node ${target.node} (the kubelet restarts the container)`,
        inject: [killContainer(ctx, target, CONTAINERS.clickhouse)],
        heal: [],
      };
    case 'restart-zookeeper': {
      if (ctx.view.zookeeper.length === 0) throw new Error('no ZooKeeper pod found');
      return {
        detail: `kill -9 every ZooKeeper server (${ctx.view.zookeeper.map((pod) => pod.name).join(', ')}; the kubelet restarts them)`,
        inject: ctx.view.zookeeper.map((pod) => killContainer(ctx, pod, CONTAINERS.zookeeper)),
        heal: [],
      };
    }
    case 'expire-zookeeper-session':
    case 'partition-zookeeper': {
      if (ctx.view.zookeeper.length === 0) throw new Error('no ZooKeeper pod found');
      const port = String(ctx.zookeeperPort);
      return drops(ctx, `iptables DROP ${target.name} <-> ZooKeeper port ${port}`, [
        ...ctx.view.zookeeper.map((zookeeper) => ({ at: target, rule: ['-s', zookeeper.ip, '-p', 'tcp', '--sport', port] })),
        ...ctx.view.zookeeper.map((zookeeper) => ({ at: zookeeper, rule: ['-s', target.ip, '-p', 'tcp', '--dport', port] })),
      ]);
    }
    case 'partition-replica': {
      const peers = ctx.view.replicas.filter((pod) => pod !== target);
      return drops(ctx, `iptables DROP ${target.name} <-> ${peers.map((pod) => pod.name).join(', ')}`, [
        ...peers.map((peer) => ({ at: target, rule: ['-s', peer.ip] })),
        ...peers.map((peer) => ({ at: peer, rule: ['-s', target.ip] })),
      ]);
    }
    case 'partition-one-way': {
      if (fault.other === undefined) throw new Error('partition-one-way needs fault.other');
      const other = replica(ctx.view, fault.other);
      if (other === target) throw new Error(`cannot partition ${target.name} from itself`);
      return drops(ctx, `iptables DROP ${target.name} -> ${other.name}`, [{ at: other, rule: ['-s', target.ip] }]);
    }
    case 'slow-network': {
      const qdisc = tbfQdisc(ctx.slow);
      const lossPercent = ctx.slow.lossPercent ?? 0;
      const others = [...ctx.view.replicas, ...ctx.view.zookeeper].filter((pod) => pod !== target);
      // Loss where packets arrive: at the target from anywhere but its loopback (the sidecar and
      // its ClickHouse), at every peer and ZooKeeper server from the target.
      const loss = lossPercent > 0 ? [{ at: target, rule: ['!', '-i', 'lo', ...randomMatch(lossPercent)] }, ...others.map((pod) => ({ at: pod, rule: ['-s', target.ip, ...randomMatch(lossPercent)] }))] : [];
      const lossPlan = drops(ctx, '', loss);
      return {
        detail: `${qdisc.join(' ')} on ${target.name}'s link, both ways${lossPercent > 0 ? `; ${lossPercent}% of packets to and from it dropped` : ''}`,
        inject: [agent(ctx, target.node, 'shape', target.uid, ...qdisc), ...lossPlan.inject],
        heal: [agent(ctx, target.node, 'unshape', target.uid), ...lossPlan.heal],
      };
    }
    case 'corrupt-parts':
      return {
        detail: `${target.name} flips a byte in each of the next ${ctx.corruptServedFiles} parts it serves (test fault hook)`,
        inject: [armCorruption(ctx, target, ctx.corruptServedFiles)],
        heal: [armCorruption(ctx, target, 0)],
      };
    case 'disk-full':
      throw new UnsupportedFaultError(fault.kind, KIND_UNSUPPORTED_FAULTS.get(fault.kind)!);
  }
}

/** What healAll runs whatever was injected: every pod's drops and tbf removed, every sidecar continued, corruption disarmed. Each may fail harmlessly (a container restarting). */
export function planClearAll(ctx: PlanContext, options: { testFaults: boolean }): Argv[] {
  return [
    ...[...ctx.view.replicas, ...ctx.view.zookeeper].map((pod) => agent(ctx, pod.node, 'clear', pod.uid)),
    ...ctx.view.replicas.map((pod) => sidecarSignal(ctx, pod, 'CONT')),
    ...(options.testFaults ? ctx.view.replicas.map((pod) => armCorruption(ctx, pod, 0)) : []),
  ];
}

// One request to the sidecar's HTTP port from inside its own container, with node's fetch (the
// image has no curl), as the ClickHouse user default with the container's own password.
// Prints "sending" before the request leaves, then one JSON line: the reply, or the error.
// With "strict", a reply other than 2xx exits 1.
const POD_HTTP_CLIENT = `
const [method, path, paramsJson, timeoutMs, bodyArg, strict] = process.argv.slice(1);
(async () => {
  const url = new URL(path, 'http://127.0.0.1:' + (process.env.CHORUS_HTTP_PORT || 8124));
  for (const [key, value] of Object.entries(JSON.parse(paramsJson))) url.searchParams.set(key, value);
  let body;
  if (bodyArg === '-') {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    body = Buffer.concat(chunks);
  } else if (bodyArg) body = bodyArg;
  const authorization = 'Basic ' + Buffer.from('default:' + (process.env.CHORUS_CLICKHOUSE_PASSWORD || '')).toString('base64');
  console.log('sending');
  try {
    const res = await fetch(url, { method, headers: { authorization }, body, signal: AbortSignal.timeout(Number(timeoutMs)) });
    const text = await res.text();
    console.log(JSON.stringify({ status: res.status, body: text, errorCode: res.headers.get('x-chorus-error-code') }));
    if (strict === 'strict' && !res.ok) process.exitCode = 1;
  } catch (error) {
    const cause = error.cause || error;
    console.log(JSON.stringify({ error: String(cause.message || cause), code: cause.code || error.name }));
    if (strict === 'strict') process.exitCode = 1;
  }
})();
`;

export interface PodHttpRequest {
  method: 'GET' | 'POST';
  path: string;
  params?: Record<string, string>;
  timeoutMs: number;
  /** The body as an argument (small ones); without it, the body is read from the command's stdin. */
  body?: string;
  /** Exit non-zero unless the reply is a 2xx. */
  strict?: boolean;
}

export function podHttpArgv(kube: KubeTarget, pod: string, request: PodHttpRequest): string[] {
  const stdin = request.body === undefined && request.method === 'POST';
  return kubectl(kube, 'exec', ...(stdin ? ['-i'] : []), pod, '-c', CONTAINERS.sidecar, '--', 'node', '-e', POD_HTTP_CLIENT, '--', request.method, request.path, JSON.stringify(request.params ?? {}), String(request.timeoutMs), stdin ? '-' : (request.body ?? ''), request.strict ? 'strict' : '');
}

/** The outcome of a podHttpArgv run. Without "sending", the request never left (the container was not running, kubectl failed). */
export function parseHttpOutput(result: CommandResult): HttpOutcome {
  const lines = result.stdout.split('\n').map((line) => line.trim());
  const sent = lines.includes('sending');
  const last = lines.filter((line) => line.startsWith('{')).pop();
  if (last !== undefined) {
    const parsed = JSON.parse(last) as { status?: number; body?: string; errorCode?: string | null; error?: string; code?: string };
    if (parsed.status !== undefined) return { kind: 'reply', status: parsed.status, body: parsed.body ?? '', errorCode: parsed.errorCode ?? null };
    // Refused: nothing reached the sidecar. Anything else (a timeout, a reset) may have reached it.
    return { kind: 'no-reply', sent: parsed.code !== 'ECONNREFUSED', error: `${parsed.code ?? ''} ${parsed.error ?? ''}`.trim() };
  }
  const why = result.spawnError ?? (result.timedOut ? 'kubectl exec gave no answer in time' : result.stderr.trim() || `kubectl exec exited ${result.code}`);
  return { kind: 'no-reply', sent, error: why };
}

/** A query to the replica's ClickHouse with clickhouse-client in its container, with the container's own password (it never leaves the cluster). */
export function clickhouseQueryArgv(kube: KubeTarget, pod: string, sql: string): string[] {
  return kubectl(kube, 'exec', pod, '-c', CONTAINERS.clickhouse, '--', 'bash', '-c', 'exec clickhouse-client --password "$CLICKHOUSE_DEFAULT_PASSWORD" --query "$1"', 'clickhouse-query', sql);
}

function replica(view: ClusterView, name: string): PodView {
  const pod = view.replicas.find((candidate) => candidate.name === name);
  if (!pod) throw new Error(`no replica pod ${name} (pods: ${view.replicas.map((candidate) => candidate.name).join(', ') || 'none'})`);
  if (!pod.uid || !pod.node || !pod.ip) throw new Error(`replica pod ${name} is not running yet (no uid, node or IP)`);
  return pod;
}

function agent(ctx: PlanContext, node: string, op: string, ...args: string[]): string[] {
  return kubectl(ctx.kube, 'exec', agentName(node), '-c', 'agent', '--', 'chroot', '/host', 'bash', '-c', ctx.agentScript, 'kind-agent', op, ...args);
}

function sidecarSignal(ctx: PlanContext, pod: PodView, signal: 'KILL' | 'STOP' | 'CONT'): string[] {
  return kubectl(ctx.kube, 'exec', pod.name, '-c', CONTAINERS.sidecar, '--', 'bash', '-c', ctx.agentScript, 'kind-agent', 'signal-sidecar', signal);
}

function killContainer(ctx: PlanContext, pod: PodView, container: string): string[] {
  const id = pod.containerIds[container];
  if (!id) throw new Error(`${pod.name} has no running ${container} container`);
  return agent(ctx, pod.node, 'kill-container', id);
}

function armCorruption(ctx: PlanContext, pod: PodView, files: number): string[] {
  return podHttpArgv(ctx.kube, pod.name, { method: 'POST', path: '/_chorus/faults', timeoutMs: 10_000, body: JSON.stringify({ corruptServedFiles: files }), strict: true });
}

function drops(ctx: PlanContext, detail: string, rules: Array<{ at: PodView; rule: string[] }>): FaultPlan {
  return {
    detail,
    inject: rules.map(({ at, rule }) => agent(ctx, at.node, 'drop', at.uid, ...rule)),
    heal: rules.map(({ at, rule }) => agent(ctx, at.node, 'undrop', at.uid, ...rule)),
  };
}
