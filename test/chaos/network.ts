import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { isAlive } from '../../src/dev/processes.js';

/*
 * The chaos suite's local network: a Linux bridge and, per member, a network namespace joined
 * to it by a veth pair, so that a partition really drops packets.
 *
 *   bridge  <prefix><tag>br   10.231.N.1/24  the host: processes on it (ZooKeeper) are reachable there
 *   veth    <prefix><tag>h<i> (on the bridge)  <->  <prefix><tag>n<i> (in the namespace, 10.231.N.<i+2>)
 *   netns   <prefix>-<tag>-<pid>-<member>
 *
 * Every name carries the run's random tag, so parallel runs and leftovers never clash; the
 * namespace names also carry the owning pid, which is how sweepStale tells a crashed run's
 * leftovers from a live run's resources.
 *
 * Drops happen where the packet arrives (iptables INPUT in the receiving namespace, or in a
 * per-run host chain for packets to the host), never where it leaves: a drop on the way out
 * fails the sender's send() at once with EPERM, which no real network does; a drop on the way
 * in leaves the sender waiting for an answer, as a partition does.
 *
 * Two kinds of rules, each in chains of its own so that one can go without the other:
 *   cuts  (partition, isolate, isolateFromHostPort)  namespace chain CHAOS-CUT, host chain <PREFIX><TAG>;
 *                                                    heal() flushes them
 *   loss  (slow)                                     namespace chain CHAOS-SLOW, host chain <PREFIX><TAG>S;
 *                                                    clearSlow() removes them, heal() leaves them
 * A slow network is a property of the link, like netem: healing the partitions of a run does
 * not make its links fast again.
 *
 * Slow without netem (kernels without sch_netem, like this project's VMs): tbf on both ends of
 * the member's veth pair limits the rate each way and queues what exceeds it, up to a latency
 * budget (beyond it tbf drops); iptables' statistic match drops a random share of the packets
 * where they arrive. Loopback traffic inside the namespace (a sidecar and its ClickHouse on
 * 127.0.0.1) goes through neither.
 *
 * What a one-way partition means for TCP: partition(a, b, { oneWay: true }) drops every packet
 * from a to b, and nothing from b to a. A new connection fails in both directions (a's SYN is
 * lost; b's SYN arrives but a's SYN-ACK is lost), so the difference shows only on connections
 * established before the fault (b's bytes still reach a, a's never reach b, and b's
 * retransmissions keep a's side alive) and on datagrams.
 */

export interface ChaosNetworkOptions {
  /** Starts every name; letters and digits, at most 6 so interface names fit in 15 characters. */
  prefix: string;
  members: readonly string[];
  /** First two octets of the run's /24; its third octet is picked among the free ones. */
  subnetBase?: string;
}

export type IsolateFrom = 'peers' | 'host' | 'all';

export interface NetemOptions {
  delayMs?: number;
  lossPercent?: number;
}

export interface SlowOptions {
  /** The rate each way, in kbit/s (tbf on both veth ends). */
  rateKbit: number;
  /** The longest a packet waits in the queue once the rate is exceeded; tbf drops what would wait longer. Default 500. */
  latencyMs?: number;
  /** The share of packets dropped at random, each way (iptables statistic, where they arrive). */
  lossPercent?: number;
}

export class NetemUnavailableError extends Error {
  constructor(detail: string) {
    super(`tc netem is unavailable (the kernel lacks sch_netem?): ${detail}`);
    this.name = 'NetemUnavailableError';
  }
}

const MAX_PREFIX = 6;
// Namespace-local chains: every namespace has its own tables, so fixed names cannot clash.
const CUT_CHAIN = 'CHAOS-CUT';
const SLOW_CHAIN = 'CHAOS-SLOW';
// The host chain of loss rules is the run's chain name plus this letter (not a hex digit, so no tag ends with it).
const HOST_SLOW_SUFFIX = 'S';
const DEFAULT_SLOW_LATENCY_MS = 500;
// tbf needs a bucket of at least a full frame; 10 ms of the rate when that is more.
const MIN_TBF_BURST_BYTES = 4096;
const MAX_MEMBERS = 99;
const TAG_BYTES = 2;

interface Member {
  name: string;
  namespace: string;
  hostVeth: string;
  namespaceVeth: string;
  address: string;
}

export class ChaosNetwork {
  readonly tag: string;
  readonly hostAddress: string;
  readonly bridge: string;
  private readonly prefix: string;
  private readonly hostChain: string;
  private readonly hostSlowChain: string;
  private readonly members = new Map<string, Member>();
  /** Per slowed member, the iptables argv lists that added its loss rules (each run again with -D by clearSlow). */
  private readonly lossRules = new Map<string, string[][]>();
  private destroyed = false;

  private constructor(prefix: string, tag: string, subnet: string) {
    this.prefix = prefix;
    this.tag = tag;
    this.bridge = `${prefix}${tag}br`;
    this.hostChain = `${prefix}${tag}`.toUpperCase();
    this.hostSlowChain = `${this.hostChain}${HOST_SLOW_SUFFIX}`;
    this.hostAddress = `${subnet}.1`;
  }

  static create(options: ChaosNetworkOptions): ChaosNetwork {
    const { prefix, members } = options;
    checkPrefix(prefix);
    if (members.length === 0 || members.length > MAX_MEMBERS) throw new Error(`between 1 and ${MAX_MEMBERS} members, not ${members.length}`);
    for (const name of members) if (!/^[a-z0-9][a-z0-9-]{0,30}$/i.test(name)) throw new Error(`member names are letters, digits and dashes: ${name}`);
    if (new Set(members).size !== members.length) throw new Error(`member names repeat: ${members.join(', ')}`);

    const network = new ChaosNetwork(prefix, randomBytes(TAG_BYTES).toString('hex'), pickFreeSubnet(options.subnetBase ?? '10.231'));
    liveNetworks.add(network);
    installExitCleanup();
    try {
      network.build(members);
    } catch (error) {
      network.destroy();
      throw error;
    }
    return network;
  }

  /** Removes what crashed runs with this prefix left behind: namespaces whose owner is gone, their links and host chains. */
  static sweepStale(prefix: string): string[] {
    checkPrefix(prefix);
    const removed: string[] = [];
    const liveTags = new Set<string>();
    for (const namespace of listNamespaces()) {
      const match = new RegExp(`^${prefix}-([0-9a-f]{${TAG_BYTES * 2}})-(\\d+)-`).exec(namespace);
      if (!match) continue;
      const [, tag, pid] = match as unknown as [string, string, string];
      if (isAlive(Number(pid))) {
        liveTags.add(tag);
      } else {
        tryRun(['ip', 'netns', 'delete', namespace]);
        removed.push(namespace);
      }
    }
    const ownTag = new RegExp(`^${prefix}([0-9a-f]{${TAG_BYTES * 2}})(br|h\\d+|n\\d+)$`);
    for (const link of listLinks()) {
      const tag = ownTag.exec(link)?.[1];
      if (tag === undefined || liveTags.has(tag)) continue;
      tryRun(['ip', 'link', 'delete', link]);
      removed.push(link);
    }
    const hostChains = new RegExp(`^${prefix.toUpperCase()}([0-9A-F]{${TAG_BYTES * 2}})${HOST_SLOW_SUFFIX}?$`);
    for (const chain of listHostChains()) {
      const tag = hostChains.exec(chain)?.[1]?.toLowerCase();
      if (tag === undefined || liveTags.has(tag)) continue;
      removeHostChain(chain);
      removed.push(chain);
    }
    return removed;
  }

  address(member: string): string {
    return this.member(member).address;
  }

  namespace(member: string): string {
    return this.member(member).namespace;
  }

  /** Starts argv inside the member's namespace; the caller owns the child. */
  exec(member: string, argv: readonly string[], options: SpawnOptions = {}): ChildProcess {
    if (argv.length === 0) throw new Error('exec needs a command');
    return spawn('ip', ['netns', 'exec', this.member(member).namespace, ...argv], { stdio: 'pipe', ...options });
  }

  /** Drops packets between a and b; with oneWay, only those from a to b. */
  partition(a: string, b: string, options: { oneWay?: boolean } = {}): void {
    const from = this.member(a);
    const to = this.member(b);
    if (from === to) throw new Error(`cannot partition ${a} from itself`);
    this.dropArriving(to, from.address);
    if (!options.oneWay) this.dropArriving(from, to.address);
  }

  isolate(member: string, options: { from: IsolateFrom }): void {
    const isolated = this.member(member);
    if (options.from !== 'host') {
      for (const peer of this.members.values()) if (peer !== isolated) this.partition(isolated.name, peer.name);
    }
    if (options.from !== 'peers') {
      this.dropArriving(isolated, this.hostAddress);
      run(['iptables', '-w', '-A', this.hostChain, '-s', isolated.address, '-j', 'DROP']);
    }
  }

  /**
   * Cuts the member from one TCP port of the host address only (ZooKeeper, which runs on the
   * host): its packets to that port are dropped on the host, the port's packets to it in its
   * namespace. Everything else between the host and the member flows, clients on the host
   * connecting to the member included (their source ports are ephemeral ones, never a
   * listening port like ZooKeeper's).
   */
  isolateFromHostPort(member: string, port: number): void {
    const isolated = this.member(member);
    if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new Error(`not a TCP port: ${port}`);
    run(['iptables', '-w', '-A', this.hostChain, '-s', isolated.address, '-p', 'tcp', '--dport', String(port), '-j', 'DROP']);
    run(inNamespace(isolated, ['iptables', '-w', '-A', CUT_CHAIN, '-s', this.hostAddress, '-p', 'tcp', '--sport', String(port), '-j', 'DROP']));
  }

  /** Removes every cut (partition, isolate, isolateFromHostPort), in the namespaces and on the host; slow and netem stay until clearSlow and clearNetem. */
  heal(): void {
    for (const member of this.members.values()) run(inNamespace(member, ['iptables', '-w', '-F', CUT_CHAIN]));
    run(['iptables', '-w', '-F', this.hostChain]);
  }

  /**
   * Makes the member's network slow without netem: its rate limited each way (tbf on both veth
   * ends; what exceeds the rate waits, up to latencyMs) and, with lossPercent, a random share of
   * the packets to and from it dropped where they arrive. Replaces an earlier slow() or netem()
   * of the member (they share the veth's root qdisc). Stays until clearSlow, through heal().
   */
  slow(member: string, options: SlowOptions): void {
    const target = this.member(member);
    const tbf = tbfQdisc(options);
    const lossPercent = options.lossPercent ?? 0;
    this.clearSlow(member);

    run(inNamespace(target, ['tc', 'qdisc', 'replace', 'dev', target.namespaceVeth, 'root', ...tbf]));
    run(['tc', 'qdisc', 'replace', 'dev', target.hostVeth, 'root', ...tbf]);

    if (lossPercent === 0) return;
    const random = [...randomMatch(lossPercent), '-j', 'DROP'];
    // Arriving at the member from outside (not its loopback), at each peer from it, at the host from it.
    const rules = [
      inNamespace(target, ['iptables', '-w', '-A', SLOW_CHAIN, '-i', target.namespaceVeth, ...random]),
      ...[...this.members.values()].filter((peer) => peer !== target).map((peer) => inNamespace(peer, ['iptables', '-w', '-A', SLOW_CHAIN, '-s', target.address, ...random])),
      ['iptables', '-w', '-A', this.hostSlowChain, '-s', target.address, ...random],
    ];
    this.lossRules.set(member, rules);
    for (const rule of rules) run(rule);
  }

  /** Undoes slow(): the member's tbf qdiscs and loss rules. */
  clearSlow(member: string): void {
    const target = this.member(member);
    for (const rule of this.lossRules.get(member) ?? []) tryRun(rule.map((arg) => (arg === '-A' ? '-D' : arg)));
    this.lossRules.delete(member);
    this.deleteRootQdiscs(target);
  }

  /**
   * Delays and/or drops every packet to and from the member (so a round trip gains twice
   * delayMs). Needs sch_netem (slow() does without); replaces an earlier slow() of the member.
   */
  netem(member: string, options: NetemOptions): void {
    const target = this.member(member);
    const impairment = ['netem'];
    if (options.delayMs) impairment.push('delay', `${options.delayMs}ms`);
    if (options.lossPercent) impairment.push('loss', `${options.lossPercent}%`);
    try {
      run(inNamespace(target, ['tc', 'qdisc', 'replace', 'dev', target.namespaceVeth, 'root', ...impairment]));
      run(['tc', 'qdisc', 'replace', 'dev', target.hostVeth, 'root', ...impairment]);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (/qdisc kind is unknown/i.test(message)) throw new NetemUnavailableError(message);
      throw error;
    }
  }

  clearNetem(member: string): void {
    this.deleteRootQdiscs(this.member(member));
  }

  /** Removes the namespaces (and with them the veth pairs), the bridge and the host chain; safe to call twice. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const member of this.members.values()) {
      tryRun(['ip', 'netns', 'delete', member.namespace]);
      tryRun(['ip', 'link', 'delete', member.hostVeth]);
    }
    tryRun(['ip', 'link', 'delete', this.bridge]);
    removeHostChain(this.hostChain);
    removeHostChain(this.hostSlowChain);
    liveNetworks.delete(this);
  }

  private build(memberNames: readonly string[]): void {
    const subnet = this.hostAddress.slice(0, this.hostAddress.lastIndexOf('.'));
    memberNames.forEach((name, index) => {
      this.members.set(name, {
        name,
        namespace: `${this.prefix}-${this.tag}-${process.pid}-${name}`,
        hostVeth: `${this.prefix}${this.tag}h${index}`,
        namespaceVeth: `${this.prefix}${this.tag}n${index}`,
        address: `${subnet}.${index + 2}`,
      });
    });
    // Namespaces first: while the links exist, a namespace carrying this pid protects them from sweepStale.
    for (const member of this.members.values()) run(['ip', 'netns', 'add', member.namespace]);
    run(['ip', 'link', 'add', this.bridge, 'type', 'bridge']);
    run(['ip', 'addr', 'add', `${this.hostAddress}/24`, 'dev', this.bridge]);
    run(['ip', 'link', 'set', this.bridge, 'up']);
    for (const member of this.members.values()) {
      run(['ip', 'link', 'add', member.hostVeth, 'type', 'veth', 'peer', 'name', member.namespaceVeth]);
      run(['ip', 'link', 'set', member.namespaceVeth, 'netns', member.namespace]);
      run(['ip', 'link', 'set', member.hostVeth, 'master', this.bridge, 'up']);
      run(inNamespace(member, ['ip', 'addr', 'add', `${member.address}/24`, 'dev', member.namespaceVeth]));
      run(inNamespace(member, ['ip', 'link', 'set', member.namespaceVeth, 'up']));
      run(inNamespace(member, ['ip', 'link', 'set', 'lo', 'up']));
      for (const chain of [CUT_CHAIN, SLOW_CHAIN]) {
        run(inNamespace(member, ['iptables', '-w', '-N', chain]));
        run(inNamespace(member, ['iptables', '-w', '-A', 'INPUT', '-j', chain]));
      }
    }
    for (const chain of [this.hostChain, this.hostSlowChain]) {
      run(['iptables', '-w', '-N', chain]);
      run(['iptables', '-w', '-I', 'INPUT', '-j', chain]);
    }
  }

  private dropArriving(at: Member, source: string): void {
    run(inNamespace(at, ['iptables', '-w', '-A', CUT_CHAIN, '-s', source, '-j', 'DROP']));
  }

  private deleteRootQdiscs(target: Member): void {
    tryRun(inNamespace(target, ['tc', 'qdisc', 'del', 'dev', target.namespaceVeth, 'root']));
    tryRun(['tc', 'qdisc', 'del', 'dev', target.hostVeth, 'root']);
  }

  private member(name: string): Member {
    if (this.destroyed) throw new Error(`network ${this.tag} is destroyed`);
    const member = this.members.get(name);
    if (!member) throw new Error(`no member ${name} (members: ${[...this.members.keys()].join(', ')})`);
    return member;
  }
}

/**
 * The tbf qdisc (what follows `root`) of a slow link: the rate, a bucket of at least a frame,
 * the queue's latency budget. Shared with the kind backend, which shapes a pod's link the same way.
 */
export function tbfQdisc(options: SlowOptions): string[] {
  const { rateKbit, latencyMs = DEFAULT_SLOW_LATENCY_MS, lossPercent = 0 } = options;
  if (!(rateKbit > 0) || !Number.isFinite(rateKbit)) throw new Error(`rateKbit must be a positive number: ${rateKbit}`);
  if (!(latencyMs > 0) || !Number.isFinite(latencyMs)) throw new Error(`latencyMs must be a positive number: ${latencyMs}`);
  if (!(lossPercent >= 0 && lossPercent < 100)) throw new Error(`lossPercent must be in [0, 100): ${lossPercent}`);
  const burstBytes = Math.max(MIN_TBF_BURST_BYTES, Math.ceil((rateKbit * 1000) / 8 / 100));
  return ['tbf', 'rate', `${Math.round(rateKbit)}kbit`, 'burst', String(burstBytes), 'latency', `${Math.round(latencyMs)}ms`];
}

/** The iptables match of lossPercent of the packets, at random (the statistic module: no netem needed). */
export function randomMatch(lossPercent: number): string[] {
  return ['-m', 'statistic', '--mode', 'random', '--probability', String(lossPercent / 100)];
}

/** Why the suite cannot build networks here, or undefined when it can. */
export function chaosNetworkUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  for (const tool of ['ip', 'iptables', 'tc']) {
    if (!tryRun(['sh', '-c', `command -v ${tool}`])) return `${tool} is not installed (scripts/setup.sh installs it)`;
  }
  return undefined;
}

// The exit-cleanup registry: every network not yet destroyed, removed on exit or a fatal signal.
const liveNetworks = new Set<ChaosNetwork>();
let exitCleanupInstalled = false;

function installExitCleanup(): void {
  if (exitCleanupInstalled) return;
  exitCleanupInstalled = true;
  const destroyAll = () => {
    for (const network of [...liveNetworks]) network.destroy();
  };
  process.on('exit', destroyAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = () => {
      destroyAll();
      process.removeListener(signal, onSignal);
      // Our listener replaced the default action: without it the signal terminates as usual,
      // unless the program handles the signal itself (the chaos runner stops its run cleanly).
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

function checkPrefix(prefix: string): void {
  if (!new RegExp(`^[a-z][a-z0-9]{0,${MAX_PREFIX - 1}}$`).test(prefix)) {
    throw new Error(`prefix must be 1 to ${MAX_PREFIX} lowercase letters or digits, starting with a letter: ${prefix}`);
  }
}

function pickFreeSubnet(base: string): string {
  if (!/^\d{1,3}\.\d{1,3}$/.test(base)) throw new Error(`subnetBase is two octets, like 10.231: ${base}`);
  const taken = new Set<number>();
  const inUse = `${run(['ip', '-o', '-4', 'addr', 'show'])}\n${run(['ip', '-4', 'route', 'show', 'table', 'all'])}`;
  const escaped = base.replace('.', '\\.');
  for (const match of inUse.matchAll(new RegExp(`\\b${escaped}\\.(\\d{1,3})\\.`, 'g'))) taken.add(Number(match[1]));
  const free = Array.from({ length: 256 }, (_, third) => third).filter((third) => !taken.has(third));
  const third = free[Math.floor(Math.random() * free.length)];
  if (third === undefined) throw new Error(`every ${base}.N.0/24 is in use`);
  return `${base}.${third}`;
}

function removeHostChain(chain: string): void {
  while (tryRun(['iptables', '-w', '-D', 'INPUT', '-j', chain]) !== undefined);
  tryRun(['iptables', '-w', '-F', chain]);
  tryRun(['iptables', '-w', '-X', chain]);
}

function listNamespaces(): string[] {
  return (tryRun(['ip', 'netns', 'list']) ?? '').split('\n').map((line) => line.split(' ')[0] ?? '').filter(Boolean);
}

function listLinks(): string[] {
  return (tryRun(['ip', '-o', 'link', 'show']) ?? '')
    .split('\n')
    .map((line) => /^\d+: ([^:@]+)/.exec(line)?.[1] ?? '')
    .filter(Boolean);
}

function listHostChains(): string[] {
  return (tryRun(['iptables', '-w', '-S']) ?? '')
    .split('\n')
    .map((line) => /^-N (\S+)$/.exec(line)?.[1] ?? '')
    .filter(Boolean);
}

function inNamespace(member: Member, argv: readonly string[]): string[] {
  return ['ip', 'netns', 'exec', member.namespace, ...argv];
}

/** Runs a command; its output, or an error carrying the command line and its stderr. */
export function run(argv: readonly string[]): string {
  const [command, ...args] = argv as [string, ...string[]];
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? '').trim();
    throw new Error(`${argv.join(' ')} failed: ${stderr || (error as Error).message}`);
  }
}

/** For removals that may find nothing to remove: the output, or undefined when the command failed. */
export function tryRun(argv: readonly string[]): string | undefined {
  try {
    return run(argv);
  } catch {
    return undefined;
  }
}
