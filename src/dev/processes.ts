import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { sleep } from '../core/async.js';

const handedOut = new Set<number>();

/** The low end of the kernel's ephemeral range: outgoing connections take ports from there. */
function ephemeralLow(): number {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A free TCP port on loopback, below the ephemeral range: a port the kernel hands out (port 0)
 * can be taken by an outgoing connection between now and the moment a server binds it, which
 * made clusters fail to start now and then. Never the same port twice in one process.
 */
export async function freePort(): Promise<number> {
  const high = Math.min(ephemeralLow(), 65536) - 1;
  const low = Math.max(10_000, high - 12_000);
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (handedOut.has(port)) continue;
    if (await canBind(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free port found below the ephemeral range');
}

/**
 * Starts a long-lived process in its own process group, output to `logFile`, not tied to
 * this process: `chorus dev up` returns and leaves it running, `dev down` stops it by pid.
 * With `netns`, it runs in that network namespace: `ip netns exec` enters it and then execs the
 * command, so the pid returned is still the command's own.
 */
export function spawnDetached(command: string, args: string[], opts: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string; netns?: string }): number {
  const out = openSync(opts.logFile, 'a');
  if (opts.netns) [command, args] = ['ip', ['netns', 'exec', opts.netns, command, ...args]];
  const child = spawn(command, args, {
    detached: true,
    stdio: ['ignore', out, out],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  closeSync(out);
  child.unref();
  if (child.pid === undefined) throw new Error(`could not start ${command}`);
  return child.pid;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopProcess(pid: number, graceMs = 10_000): Promise<void> {
  if (!isAlive(pid)) return;
  signalGroup(pid, 'SIGCONT');
  signalGroup(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(50);
  if (isAlive(pid)) {
    signalGroup(pid, 'SIGKILL');
    while (isAlive(pid)) await sleep(20);
  }
}

export async function waitFor(what: string, check: () => Promise<boolean>, opts: { timeoutMs: number; pid?: number; logFile?: string }): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (opts.pid !== undefined && !isAlive(opts.pid)) {
      throw new Error(`${what} exited during start-up${opts.logFile ? `; see ${opts.logFile}` : ''}`);
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready within ${opts.timeoutMs} ms${opts.logFile ? `; see ${opts.logFile}` : ''}`);
    await sleep(100);
  }
}

/** True when GET `url` answers 200 within 2 s. */
export function httpOk(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}
