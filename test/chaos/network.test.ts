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
// Servers of the test process on the host's bridge address: one stands for ZooKeeper, one for anything else there.
const HOST_PORT = 7412;
const OTHER_HOST_PORT = 7413;
const SINK_PORT = 7414;
const UDP_PORT = 7415;
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

// Counts the bytes of the first connection for windowMs from its first byte, prints them as JSON, exits.
const SINK = `
const [port, windowMs] = process.argv.slice(1).map(Number);
const server = require('node:net').createServer((socket) => {
  let bytes = 0, started = 0;
  socket.on('data', (chunk) => {
    if (!started) { started = Date.now(); setTimeout(() => { process.stdout.write(JSON.stringify({ bytes, ms: Date.now() - started }) + '\\n'); process.exit(0); }, windowMs); }
    bytes += chunk.length;
  });
  socket.on('error', () => {});
});
server.listen(port, '0.0.0.0', () => process.stdout.write('listening\\n'));
`;

// Writes to host:port as fast as the connection takes it, until killed.
const SENDER = `
const [host, port] = process.argv.slice(1);
const chunk = Buffer.alloc(64 * 1024, 120);
const socket = require('node:net').connect(Number(port), host);
const pump = () => { while (socket.write(chunk)); };
socket.on('connect', pump);
socket.on('drain', pump);
socket.on('error', () => process.exit(0));
`;

// Echoes every datagram.
const UDP_ECHO = `
const socket = require('node:dgram').createSocket('udp4');
socket.on('message', (message, from) => socket.send(message, from.port, from.address));
socket.bind(Number(process.argv[1]), '0.0.0.0', () => process.stdout.write('listening\\n'));
`;

// Sends count datagrams, one every 2 ms, then reports how many came back within a second of the last.
const UDP_PROBE = `
const [host, port, count] = process.argv.slice(1);
const socket = require('node:dgram').createSocket('udp4');
const back = new Set();
socket.on('message', (message) => back.add(message.toString()));
let sent = 0;
const timer = setInterval(() => {
  socket.send(String(sent), Number(port), host);
  if (++sent === Number(count)) {
    clearInterval(timer);
    setTimeout(() => { process.stdout.write(JSON.stringify({ sent, replies: back.size }) + '\\n'); process.exit(0); }, 1000);
  }
}, 2);
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

  async function probeFrom(member: string, timeoutMs = PROBE_TIMEOUT_MS, target: { host: string; port: number } = { host: network.address('a'), port: PORT }): Promise<ProbeResult> {
    const child = track(network.exec(member, [process.execPath, '-e', PROBE, target.host, String(target.port), String(timeoutMs)]));
    const output = watchOutput(child);
    const line = await output.waitFor('}', timeoutMs + 10_000);
    return JSON.parse(line) as ProbeResult;
  }

  /** kbit/s of TCP payload from one member to another, measured by the receiver over windowMs. */
  async function throughputKbit(from: string, to: string, windowMs: number): Promise<number> {
    const sink = track(network.exec(to, [process.execPath, '-e', SINK, String(SINK_PORT), String(windowMs)]));
    const sinkOutput = watchOutput(sink);
    await sinkOutput.waitFor('listening', 10_000);
    const sender = track(network.exec(from, [process.execPath, '-e', SENDER, network.address(to), String(SINK_PORT)]));
    try {
      const { bytes, ms } = JSON.parse(await sinkOutput.waitFor('"bytes"', windowMs + 20_000)) as { bytes: number; ms: number };
      return (bytes * 8) / ms;
    } finally {
      sender.kill('SIGKILL');
      sink.kill('SIGKILL');
    }
  }

  /** How many of count datagrams from the member to host:port came back. */
  async function udpRoundTrips(member: string, host: string, count: number): Promise<{ sent: number; replies: number }> {
    const child = track(network.exec(member, [process.execPath, '-e', UDP_PROBE, host, String(UDP_PORT), String(count)]));
    return JSON.parse(await watchOutput(child).waitFor('"replies"', 30_000)) as { sent: number; replies: number };
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

  it('isolateFromHostPort(a, port) cuts a from that host port only, both ways, until heal()', async () => {
    const zookeeper = await hostServer(network.hostAddress, HOST_PORT);
    const other = await hostServer(network.hostAddress, OTHER_HOST_PORT);
    try {
      const held = track(network.exec('a', [process.execPath, '-e', HELD_CLIENT, network.hostAddress, String(HOST_PORT)]));
      const heldOutput = watchOutput(held);
      await heldOutput.waitFor('connected', 10_000);
      held.stdin?.write('before\n');
      await heldOutput.waitFor('echo:before', 10_000);

      network.isolateFromHostPort('a', HOST_PORT);
      try {
        // On the connection made before, what the host's port sends never reaches a (the namespace's rule) ...
        zookeeper.push('pushed\n');
        await expect(heldOutput.waitFor('pushed', PROBE_TIMEOUT_MS)).rejects.toThrow(/not seen/);
        expect(await probeFrom('a', PROBE_TIMEOUT_MS, { host: network.hostAddress, port: HOST_PORT })).toMatchObject({ connected: false, error: 'timeout' });
        // Not cut: a from the host's other ports, a's peers from the port, clients on the host from a.
        expect(await probeFrom('a', PROBE_TIMEOUT_MS, { host: network.hostAddress, port: OTHER_HOST_PORT })).toMatchObject({ connected: true, echoed: true });
        expect(await probeFrom('b', PROBE_TIMEOUT_MS, { host: network.hostAddress, port: HOST_PORT })).toMatchObject({ connected: true, echoed: true });
        expect(await probeFromHost(network.address('a'), PORT)).toMatchObject({ connected: true, echoed: true });
        // ... and a's bytes never reach the host (the host's rule).
        held.stdin?.write('during\n');
        await sleep(PROBE_TIMEOUT_MS);
        expect(zookeeper.received()).not.toContain('during');
      } finally {
        network.heal();
      }
      // TCP retransmits both ways once the packets get through again.
      await heldOutput.waitFor('pushed', 30_000);
      await heldOutput.waitFor('during', 30_000);
      expect(zookeeper.received()).toContain('during');
      expect(await probeFrom('a', PROBE_TIMEOUT_MS, { host: network.hostAddress, port: HOST_PORT })).toMatchObject({ connected: true, echoed: true });
    } finally {
      await zookeeper.close();
      await other.close();
    }
  });

  it('slow(a, { rateKbit }) limits the rate to and from a to about rateKbit; clearSlow() lifts it', async () => {
    const rateKbit = 1_000;
    const windowMs = 2_000;
    // Unlimited, a veth pair carries far more than the limit: the limit below is the qdisc's doing.
    expect(await throughputKbit('b', 'a', windowMs)).toBeGreaterThan(10 * rateKbit);
    network.slow('a', { rateKbit });
    try {
      // Bounds follow from the configuration: TCP cannot beat the rate (headers count too), and
      // with a queue of latencyMs it keeps the link busy most of the time.
      for (const [from, to] of [['b', 'a'], ['a', 'b']] as const) {
        const measured = await throughputKbit(from, to, windowMs);
        expect(measured, `${from} -> ${to}`).toBeLessThanOrEqual(1.1 * rateKbit);
        expect(measured, `${from} -> ${to}`).toBeGreaterThanOrEqual(0.5 * rateKbit);
      }
      // Untouched: traffic between other members.
      expect(await throughputKbit('b', 'c', windowMs)).toBeGreaterThan(10 * rateKbit);
    } finally {
      network.clearSlow('a');
    }
    expect(await throughputKbit('b', 'a', windowMs)).toBeGreaterThan(10 * rateKbit);
  });

  it('slow(a, { lossPercent }) drops that share of packets each way, not a\'s loopback traffic, and outlasts heal()', async () => {
    const count = 300;
    const echo = track(network.exec('a', [process.execPath, '-e', UDP_ECHO, String(UDP_PORT)]));
    await watchOutput(echo).waitFor('listening', 10_000);
    try {
      expect(await udpRoundTrips('b', network.address('a'), count)).toEqual({ sent: count, replies: count });
      network.slow('a', { rateKbit: 100_000, lossPercent: 30 });
      try {
        // Healing partitions leaves the link as slow as it was.
        network.heal();
        // A round trip survives both ways with probability 0.7 * 0.7 = 0.49; the bounds are over 6 standard deviations away.
        const lossy = await udpRoundTrips('b', network.address('a'), count);
        expect(lossy.replies / count).toBeGreaterThan(0.3);
        expect(lossy.replies / count).toBeLessThan(0.68);
        // A sidecar and its ClickHouse talk over loopback inside the namespace: not slowed.
        expect(await udpRoundTrips('a', '127.0.0.1', count)).toEqual({ sent: count, replies: count });
      } finally {
        network.clearSlow('a');
      }
      expect(await udpRoundTrips('b', network.address('a'), count)).toEqual({ sent: count, replies: count });
    } finally {
      echo.kill('SIGKILL');
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface HostServer {
  /** Everything received so far, from every connection. */
  received(): string;
  /** Sends text to every client unasked: data that flows only from the server's port. */
  push(text: string): void;
  close(): Promise<void>;
}

/** An echo server of the test process on the host. */
function hostServer(host: string, port: number): Promise<HostServer> {
  let received = '';
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('data', (chunk) => {
      received += chunk.toString();
      socket.write(chunk);
    });
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () =>
      resolve({
        received: () => received,
        push: (text) => {
          for (const socket of sockets) socket.write(text);
        },
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      }),
    );
  });
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
