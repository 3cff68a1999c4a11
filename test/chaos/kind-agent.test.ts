import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ChaosNetwork, chaosNetworkUnavailable } from './network.js';

/*
 * kind-agent.sh's ops, run on this machine as they run on a kind node: what a container and a
 * pod are to the script is only what /proc says of their processes (a PID namespace whose first
 * process it is, a cgroup path holding the container's id or the pod's UID, a network
 * namespace), so a process made that way here is one. kubectl exec is played by nsenter: the
 * process it starts has no parent inside the container's PID namespace, as an exec'd one.
 */

const SCRIPT = readFileSync(fileURLToPath(new URL('./kind-agent.sh', import.meta.url)), 'utf8');
const PREFIX = 'chk';
const PORT = 7421;
const PROBE_TIMEOUT_MS = 1_500;

const ECHO_SERVER = `
require('node:net').createServer((socket) => { socket.on('data', (chunk) => socket.write(chunk)); socket.on('error', () => {}); })
  .listen(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('listening\\n'));
`;

/** A cgroup hierarchy where this process may make a group (as a container runtime does). */
function cgroupRoot(): string | undefined {
  for (const root of ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified', '/sys/fs/cgroup']) {
    if (!existsSync(join(root, 'cgroup.procs'))) continue;
    const probe = join(root, `chorus-probe-${process.pid}`);
    try {
      mkdirSync(probe);
      rmdirSync(probe);
      return root;
    } catch {
      // not writable: the next one
    }
  }
  return undefined;
}

const CGROUP_ROOT = cgroupRoot();
const unavailable =
  chaosNetworkUnavailable() ??
  (spawnSync('sh', ['-c', 'command -v unshare && command -v nsenter']).status !== 0 ? 'unshare and nsenter (util-linux) are needed' : undefined) ??
  (CGROUP_ROOT === undefined ? 'no cgroup hierarchy where a group can be made' : undefined);
if (unavailable) console.warn(`kind agent tests skipped: ${unavailable}`);

function agent(args: string[], options: { via?: string[] } = {}) {
  const argv = [...(options.via ?? []), 'bash', '-c', SCRIPT, 'kind-agent', ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 30_000 });
}

describe.skipIf(unavailable !== undefined)('kind-agent.sh', () => {
  const children: ChildProcess[] = [];
  const groups: string[] = [];
  let network: ChaosNetwork | undefined;

  const track = (child: ChildProcess) => {
    children.push(child);
    return child;
  };
  /** A cgroup named like a runtime's, holding the given processes. */
  const cgroup = (name: string, pids: number[]) => {
    const dir = join(CGROUP_ROOT!, name);
    mkdirSync(dir);
    groups.push(dir);
    for (const pid of pids) writeFileSync(join(dir, 'cgroup.procs'), String(pid));
  };

  afterEach(async () => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
    await sleep(200);
    for (const dir of groups.splice(0)) {
      // Processes still there (grandchildren of the killed ones) go too, or the group cannot be removed.
      for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) killQuietly(Number(pid));
      await until(() => readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim() === '', 5_000);
      rmdirSync(dir);
    }
  });
  afterAll(() => network?.destroy());

  it("signal-sidecar stops, continues and kills PID 1's child only (the sidecar under tini), from an exec'd shell", async () => {
    // PID 1 (sh, as tini) with one child (sleep, as the sidecar).
    const container = track(spawn('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', 'sleep 300 & wait'], { stdio: 'ignore' }));
    const init = await until(() => childrenOf(container.pid!)[0], 5_000);
    const sidecar = await until(() => childrenOf(init)[0], 5_000);
    const exec = ['nsenter', `--target=${init}`, '--pid', '--mount', '--'];

    expect(agent(['signal-sidecar', 'STOP'], { via: exec })).toMatchObject({ status: 0 });
    expect(state(sidecar)).toBe('T');
    expect(state(init)).not.toBe('T');
    expect(agent(['signal-sidecar', 'CONT'], { via: exec })).toMatchObject({ status: 0 });
    expect(state(sidecar)).not.toBe('T');
    expect(agent(['signal-sidecar', 'KILL'], { via: exec })).toMatchObject({ status: 0 });
    // The sidecar dies; PID 1 then ends, taking the container with it (tini does so).
    await until(() => (state(sidecar) === undefined ? true : undefined), 5_000);
    await until(() => (container.exitCode !== null ? true : undefined), 5_000);
  });

  it("kill-container kills the container's first process, found by its id in the cgroup path, and nothing else in the group", async () => {
    const id = randomBytes(32).toString('hex');
    const container = track(spawn('unshare', ['--pid', '--fork', 'sleep', '300'], { stdio: 'ignore' }));
    const first = await until(() => childrenOf(container.pid!)[0], 5_000);
    // In the same group, not first in a PID namespace: an exec'd process, say.
    const other = track(spawn('sleep', ['300'], { stdio: 'ignore' }));
    cgroup(`cri-containerd-${id}.scope`, [first, other.pid!]);

    const killed = agent(['kill-container', id]);
    expect(killed.status, killed.stderr).toBe(0);
    await until(() => (state(first) === undefined ? true : undefined), 5_000);
    expect(state(other.pid!)).toBeDefined();

    const missing = agent(['kill-container', randomBytes(32).toString('hex')]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/has no process on this node/);
  });

  it("drop, undrop, shape, unshape and clear act in the pod's network namespace, found by its UID, and on its veth peer", async () => {
    ChaosNetwork.sweepStale(PREFIX);
    network = ChaosNetwork.create({ prefix: PREFIX, members: ['pod'] });
    const namespaceVeth = `${PREFIX}${network.tag}n0`;
    const hostVeth = `${PREFIX}${network.tag}h0`;
    // A pod's interface is the one its default route leaves by.
    execFileSync('ip', ['netns', 'exec', network.namespace('pod'), 'ip', 'route', 'add', 'default', 'via', network.hostAddress]);
    const server = track(network.exec('pod', [process.execPath, '-e', ECHO_SERVER, String(PORT)]));
    await new Promise<void>((resolve) => server.stdout?.on('data', (chunk: Buffer) => chunk.toString().includes('listening') && resolve()));
    const uid = randomUUID();
    // The systemd driver's name for a pod's group: its UID with underscores.
    cgroup(`kubepods-besteffort-pod${uid.replaceAll('-', '_')}.slice`, [server.pid!]);
    const reach = () => connects(network!.address('pod'), PORT);

    expect(await reach()).toBe(true);
    expect(agent(['drop', uid, '-s', network.hostAddress])).toMatchObject({ status: 0 });
    expect(await reach()).toBe(false);
    expect(agent(['undrop', uid, '-s', network.hostAddress])).toMatchObject({ status: 0 });
    expect(await reach()).toBe(true);
    // Undoing what is already undone, or on a pod that is gone, is not an error.
    expect(agent(['undrop', uid, '-s', network.hostAddress])).toMatchObject({ status: 0 });
    expect(agent(['undrop', randomUUID(), '-s', network.hostAddress])).toMatchObject({ status: 0 });
    expect(agent(['drop', randomUUID(), '-s', network.hostAddress])).toMatchObject({ status: 1 });

    const tbf = ['tbf', 'rate', '1000kbit', 'burst', '4096', 'latency', '500ms'];
    const shaped = agent(['shape', uid, ...tbf]);
    expect(shaped.status, shaped.stderr).toBe(0);
    expect(rootQdisc(network.namespace('pod'), namespaceVeth)).toMatch(/^qdisc tbf .*rate 1Mbit/);
    expect(rootQdisc(undefined, hostVeth)).toMatch(/^qdisc tbf .*rate 1Mbit/);
    expect(agent(['unshape', uid])).toMatchObject({ status: 0 });
    expect(rootQdisc(network.namespace('pod'), namespaceVeth)).not.toMatch(/tbf/);
    expect(rootQdisc(undefined, hostVeth)).not.toMatch(/tbf/);

    // clear: every drop and the shaping at once.
    expect(agent(['drop', uid, '-s', network.hostAddress])).toMatchObject({ status: 0 });
    expect(agent(['shape', uid, ...tbf])).toMatchObject({ status: 0 });
    expect(await reach()).toBe(false);
    expect(agent(['clear', uid])).toMatchObject({ status: 0 });
    expect(await reach()).toBe(true);
    expect(rootQdisc(undefined, hostVeth)).not.toMatch(/tbf/);
  });
});

function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** The process's state letter (S, T, ...), undefined once it is gone or a zombie. */
function state(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const letter = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return letter === 'Z' ? undefined : letter;
  } catch {
    return undefined;
  }
}

function rootQdisc(namespace: string | undefined, device: string): string {
  const argv = [...(namespace ? ['ip', 'netns', 'exec', namespace] : []), 'tc', 'qdisc', 'show', 'dev', device, 'root'];
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8' }).trim();
}

function connects(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), PROBE_TIMEOUT_MS);
    socket.on('connect', () => finish(true));
    socket.on('error', () => finish(false));
  });
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function until<T>(probe: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`not so within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
