import { execFileSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChaosNetwork, NetemUnavailableError, chaosNetworkUnavailable } from './network.js';

/*
 * Observable outcomes only: a real TCP echo server inside one namespace, real connects from the
 * others and from the host. Connects that should fail are bounded by PROBE_TIMEOUT_MS.
 */

const PREFIX = 'cht';
const PORT = 7411;
const PROBE_TIMEOUT_MS = 1_500;

// Echoes every chunk and reports it on stdout, so the test sees what reached the server even when the echo is dropped.
const ECHO_SERVER = `
const server = require('node:net').createServer((socket) => {
  socket.on('data', (chunk) => { process.stdout.write('received:' + chunk.toString()); socket.write(chunk); });
  socket.on('error', () => {});
});
server.listen(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('listening\\n'));
`;

// One connect and one echo, reported as a JSON line; it gives up after the timeout.
const PROBE = `
const [host, port, timeoutMs] = process.argv.slice(1);
const started = Date.now();
const result = { connected: false, echoed: false, connectMs: -1, roundTripMs: -1, error: '' };
const socket = require('node:net').connect(Number(port), host);
const finish = () => { process.stdout.write(JSON.stringify(result) + '\\n'); socket.destroy(); process.exit(0); };
setTimeout(() => { result.error = 'timeout'; finish(); }, Number(timeoutMs));
socket.on('connect', () => { result.connected = true; result.connectMs = Date.now() - started; socket.write('ping\\n'); });
socket.on('data', () => { result.echoed = true; result.roundTripMs = Date.now() - started; finish(); });
socket.on('error', (error) => { result.error = error.code || error.message; finish(); });
`;

// A long-lived connection: each stdin line is sent, each echo printed; it says when it is connected.
const HELD_CLIENT = `
const [host, port] = process.argv.slice(1);
const socket = require('node:net').connect(Number(port), host, () => process.stdout.write('connected\\n'));
socket.on('data', (chunk) => process.stdout.write('echo:' + chunk.toString()));
socket.on('error', (error) => process.stdout.write('error:' + error.code + '\\n'));
process.stdin.on('data', (chunk) => socket.write(chunk));
`;

interface ProbeResult {
  connected: boolean;
  echoed: boolean;
  connectMs: number;
  roundTripMs: number;
  error: string;
}

const unavailable = chaosNetworkUnavailable();
if (unavailable) console.warn(`chaos network tests skipped: ${unavailable}`);

describe.skipIf(unavailable !== undefined)('ChaosNetwork', () => {
  let network: ChaosNetwork;
  const children: ChildProcess[] = [];
  let server: ChildProcess;
  let serverOutput: OutputWatch;

  beforeAll(async () => {
    ChaosNetwork.sweepStale(PREFIX);
    network = ChaosNetwork.create({ prefix: PREFIX, members: ['a', 'b', 'c'] });
    server = track(network.exec('a', [process.execPath, '-e', ECHO_SERVER, String(PORT)]));
    serverOutput = watchOutput(server);
    await serverOutput.waitFor('listening', 10_000);
  });

  afterAll(() => {
    for (const child of children) child.kill('SIGKILL');
    network?.destroy();
  });

  function track(child: ChildProcess): ChildProcess {
    children.push(child);
    return child;
  }

  async function probeFrom(member: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeResult> {
    const child = track(network.exec(member, [process.execPath, '-e', PROBE, network.address('a'), String(PORT), String(timeoutMs)]));
    const output = watchOutput(child);
    const line = await output.waitFor('}', timeoutMs + 10_000);
    return JSON.parse(line) as ProbeResult;
  }

  it('gives each member its own address and puts the host at .1 on the bridge', () => {
    const addresses = ['a', 'b', 'c'].map((member) => network.address(member));
    expect(new Set(addresses).size).toBe(3);
    expect(network.hostAddress).toMatch(/^10\.231\.\d+\.1$/);
    for (const address of addresses) expect(address.slice(0, address.lastIndexOf('.'))).toBe(network.hostAddress.slice(0, network.hostAddress.lastIndexOf('.')));
    for (const name of [network.bridge, ...listLinks().filter((link) => link.includes(network.tag))]) expect(name.length).toBeLessThanOrEqual(15);
  });

  it('reaches a server in member a from member b and from the host', async () => {
    expect(await probeFrom('b')).toMatchObject({ connected: true, echoed: true });
    expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: true, echoed: true });
  });

  it('partition(a, b) stops b from connecting while c still can; heal() lets b back in', async () => {
    network.partition('a', 'b');
    try {
      expect(await probeFrom('b')).toMatchObject({ connected: false, error: 'timeout' });
      expect(await probeFrom('c')).toMatchObject({ connected: true, echoed: true });
      expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: true, echoed: true });
    } finally {
      network.heal();
    }
    expect(await probeFrom('b')).toMatchObject({ connected: true, echoed: true });
  });

  it('a one-way partition drops only packets from a to b', async () => {
    const held = track(network.exec('b', [process.execPath, '-e', HELD_CLIENT, network.address('a'), String(PORT)]));
    const heldOutput = watchOutput(held);
    await heldOutput.waitFor('connected', 10_000);
    held.stdin?.write('before\n');
    await heldOutput.waitFor('echo:before', 10_000);

    network.partition('a', 'b', { oneWay: true });
    try {
      // A new connect needs both directions (b's SYN in, a's SYN-ACK out), so it fails.
      expect(await probeFrom('b')).toMatchObject({ connected: false, error: 'timeout' });
      // On the connection made before: b's bytes reach a, a's echo never reaches b.
      held.stdin?.write('during\n');
      await serverOutput.waitFor('received:during', 10_000);
      await expect(heldOutput.waitFor('echo:during', PROBE_TIMEOUT_MS)).rejects.toThrow(/not seen/);
      // Other members are untouched.
      expect(await probeFrom('c')).toMatchObject({ connected: true, echoed: true });
    } finally {
      network.heal();
    }
    // TCP retransmits the lost echo once a's packets get through again.
    await heldOutput.waitFor('echo:during', 30_000);
    expect(await probeFrom('b')).toMatchObject({ connected: true, echoed: true });
  });

  it('isolate(a, { from: "host" }) cuts a off from the host but not from its peers', async () => {
    network.isolate('a', { from: 'host' });
    try {
      expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: false, error: 'timeout' });
      expect(await probeFrom('b')).toMatchObject({ connected: true, echoed: true });
    } finally {
      network.heal();
    }
    expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: true, echoed: true });
  });

  it('isolate(a, { from: "all" }) cuts a off from peers and host alike', async () => {
    network.isolate('a', { from: 'all' });
    try {
      expect(await probeFrom('b')).toMatchObject({ connected: false });
      expect(await probeFrom('c')).toMatchObject({ connected: false });
      expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: false });
    } finally {
      network.heal();
    }
    expect(await probeFrom('c')).toMatchObject({ connected: true, echoed: true });
  });

  it('netem delays every packet to and from the member', async (context) => {
    const delayMs = 150;
    try {
      network.netem('a', { delayMs });
    } catch (error) {
      if (error instanceof NetemUnavailableError) {
        console.warn(`netem test skipped: ${error.message}`);
        context.skip();
      }
      throw error;
    }
    try {
      // A lower bound that follows from the configuration (SYN in and SYN-ACK out are each delayed), not a performance claim.
      const probe = await probeFrom('b', 10_000);
      expect(probe).toMatchObject({ connected: true, echoed: true });
      expect(probe.connectMs).toBeGreaterThanOrEqual(2 * delayMs);
      expect(probe.roundTripMs).toBeGreaterThanOrEqual(4 * delayMs);
    } finally {
      network.clearNetem('a');
    }
  });

  it('destroy() leaves no namespace, link or rule carrying the run tag, and may be called twice', () => {
    const tag = network.tag;
    for (const child of children) child.kill('SIGKILL');
    network.destroy();
    network.destroy();
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toContain(tag);
    expect(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })).not.toContain(tag);
    expect(execFileSync('iptables', ['-w', '-S'], { encoding: 'utf8' }).toLowerCase()).not.toContain(tag);
  });
});

describe.skipIf(unavailable !== undefined)('ChaosNetwork.sweepStale', () => {
  it('removes what a crashed run left, and leaves a live run alone', () => {
    const live = ChaosNetwork.create({ prefix: PREFIX, members: ['x'] });
    try {
      // What a process killed with SIGKILL leaves: its namespace (under a pid no process has) and links.
      const deadPid = 4_194_303;
      const staleTag = 'dead';
      const staleNamespace = `${PREFIX}-${staleTag}-${deadPid}-x`;
      execFileSync('ip', ['netns', 'add', staleNamespace]);
      execFileSync('ip', ['link', 'add', `${PREFIX}${staleTag}br`, 'type', 'bridge']);
      execFileSync('ip', ['link', 'add', `${PREFIX}${staleTag}h0`, 'type', 'veth', 'peer', 'name', `${PREFIX}${staleTag}n0`]);

      const removed = ChaosNetwork.sweepStale(PREFIX);
      expect(removed).toEqual(expect.arrayContaining([staleNamespace, `${PREFIX}${staleTag}br`]));
      expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toContain(staleTag);
      expect(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })).not.toContain(`${PREFIX}${staleTag}`);
      expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).toContain(live.namespace('x'));
      expect(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })).toContain(live.bridge);
    } finally {
      live.destroy();
    }
  });
});

function listLinks(): string[] {
  return execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\d+: ([^:@]+)/.exec(line)?.[1] ?? '')
    .filter(Boolean);
}

interface OutputWatch {
  /** Resolves with the first output line containing text (seen before or after the call). */
  waitFor(text: string, timeoutMs: number): Promise<string>;
}

function watchOutput(child: ChildProcess): OutputWatch {
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let partial = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
    for (const wake of waiters) wake();
  });
  return {
    waitFor(text, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const line = lines.find((candidate) => candidate.includes(text));
          if (line === undefined) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(line);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`"${text}" not seen within ${timeoutMs} ms; output so far: ${JSON.stringify(lines)}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

function probeFromHost(host: string, port: number, timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const result: ProbeResult = { connected: false, echoed: false, connectMs: -1, roundTripMs: -1, error: '' };
    const socket = net.connect(port, host);
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      result.error = 'timeout';
      finish();
    }, timeoutMs);
    socket.on('connect', () => {
      result.connected = true;
      result.connectMs = Date.now() - started;
      socket.write('ping\n');
    });
    socket.on('data', () => {
      result.echoed = true;
      result.roundTripMs = Date.now() - started;
      finish();
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      result.error = error.code ?? error.message;
      finish();
    });
  });
}
