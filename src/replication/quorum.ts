import { sleep } from '../core/async.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';

/** ClickHouse's default `insert_quorum_timeout` (10 minutes). */
export const DEFAULT_QUORUM_TIMEOUT_MS = 600_000;
/** The longest wait a peer serves in one call; a longer quorum wait asks again. */
export const MAX_PEER_WAIT_MS = 60_000;
/** Pause before asking a peer again whose last call failed (it is away, or restarting). */
export const QUORUM_PEER_RETRY_MS = 250;
/** LSNs one wait may ask about: an insert's blocks (one per partition it touched). */
export const MAX_WAIT_LSNS = 1000;

/** What a client asked with ClickHouse's settings: how many replicas must hold the insert, and how long to wait for them. */
export interface QuorumRequest {
  replicas: number | 'auto';
  timeoutMs: number;
}

function nonNegativeInteger(name: string, value: string): number {
  if (!/^\d{1,9}$/.test(value.trim())) throw new ChorusError('BAD_SETTING', `${name}=${JSON.stringify(value.slice(0, 40))}: expected a whole number`);
  return Number(value.trim());
}

/**
 * `insert_quorum`, `insert_quorum_timeout` and `insert_quorum_parallel` from an insert's URL
 * parameters, with ClickHouse's meanings: a quorum of 0 or 1 asks for nothing beyond this
 * replica's own attach, which every insert waits for anyway. Undefined when none is asked.
 */
export function quorumSettings(params: Record<string, string>): QuorumRequest | undefined {
  const parallel = params.insert_quorum_parallel;
  // Chorus's quorum inserts are always parallel: each waits for its own LSNs only.
  if (parallel !== undefined && !['0', '1', 'true', 'false'].includes(parallel.trim().toLowerCase())) {
    throw new ChorusError('BAD_SETTING', `insert_quorum_parallel=${JSON.stringify(parallel.slice(0, 40))}: expected 0 or 1`);
  }
  const timeoutMs = params.insert_quorum_timeout !== undefined ? nonNegativeInteger('insert_quorum_timeout', params.insert_quorum_timeout) : DEFAULT_QUORUM_TIMEOUT_MS;
  const raw = params.insert_quorum;
  if (raw === undefined) return undefined;
  if (raw.trim().toLowerCase() === 'auto') return { replicas: 'auto', timeoutMs };
  const replicas = nonNegativeInteger('insert_quorum', raw);
  return replicas <= 1 ? undefined : { replicas, timeoutMs };
}

/**
 * Waits until `done()` holds, re-checked each time an entry becomes applied or voided here.
 * True when it held; false when `timeoutMs` passed or `signal` was aborted first.
 */
export function waitForLog(log: LocalLog, done: () => boolean, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  if (done()) return Promise.resolve(true);
  if (timeoutMs <= 0 || signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const finish = (held: boolean) => {
      unsubscribe();
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(held);
    };
    const onAbort = () => finish(false);
    const unsubscribe = log.onSettled(() => {
      if (done()) finish(true);
    });
    const timer = setTimeout(() => finish(done()), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Those of `lsns` applied here once all are, or when the wait ends (time out, abort). */
export async function waitApplied(log: LocalLog, lsns: number[], timeoutMs: number, signal?: AbortSignal): Promise<number[]> {
  await waitForLog(log, () => log.appliedOf(lsns).length === lsns.length, timeoutMs, signal);
  return log.appliedOf(lsns);
}

/**
 * Whether every entry up to `lsn`, and `lsn` itself, is applied (or voided) here, waiting up to
 * `timeoutMs` for it. LSNs a lease keeps in reserve are not waited for: one used later is a later
 * write. `lsn` itself may be one used on a lease while ZooKeeper was away, so it must be here.
 */
export function waitAppliedThrough(log: LocalLog, lsn: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
  const settled = () => {
    if (log.watermarks().readable < lsn) return false;
    const state = log.get(lsn)?.state;
    return state === 'applied' || state === 'voided';
  };
  return waitForLog(log, settled, timeoutMs, signal);
}

/** A peer as the quorum sees it: it answers which of some LSNs it has applied, waiting for them a while. */
export interface QuorumPeer {
  readonly name: string;
  waitApplied(from: string, lsns: number[], timeoutMs: number, signal: AbortSignal): Promise<number[]>;
}

export interface QuorumOptions {
  /**
   * This replica, asked like a peer but without a network hop: a fresh insert is attached here
   * before the wait, but a deduplicated one waits for its first insert's entry to be applied here too.
   */
  local: QuorumPeer;
  /** The shard's other members that may count towards a quorum (decommissioned ones excluded). */
  peers: () => QuorumPeer[];
  /** The members (this one included) that failure detection holds alive now, for `insert_quorum=auto`. */
  liveMembers: () => number;
  /** Their names: what waitEveryLive waits for. */
  liveNames: () => string[];
  /** Pause before asking a peer again after a failed call (it is away, or restarting). */
  retryMs: number;
  metrics: Metrics;
  logger: Logger;
}

/**
 * The origin's side of `insert_quorum`: once the insert is attached here, it waits until enough
 * peers say they have applied its LSNs. Peers answer by a long wait on their own log, so a
 * quorum costs one gRPC call per peer, not a poll.
 */
export class Quorum {
  constructor(private readonly opts: QuorumOptions) {}

  /**
   * The replicas `request` needs, this one included; refused before anything is stored when the
   * shard has fewer members than that (ClickHouse: TOO_FEW_LIVE_REPLICAS).
   */
  replicasNeeded(request: QuorumRequest): number {
    const members = this.opts.peers().length + 1;
    if (request.replicas === 'auto') return Math.floor(this.opts.liveMembers() / 2) + 1;
    if (request.replicas > members) {
      throw new ChorusError('TOO_FEW_REPLICAS', `insert_quorum=${request.replicas} but the shard has ${members} member${members === 1 ? '' : 's'}; nothing was stored`);
    }
    return request.replicas;
  }

  /**
   * Resolves once every member that failure detection holds alive has applied `lsns`, asked
   * again as members die or come back: what `mutations_sync=2` and a schema change wait for, as
   * ClickHouse waits for its active replicas. Throws QUORUM_TIMEOUT naming those missing.
   */
  async waitEveryLive(lsns: number[], timeoutMs: number, signal?: AbortSignal): Promise<{ replicas: string[] }> {
    const holders = new Set<string>();
    const deadline = Date.now() + timeoutMs;
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const missing = () => this.opts.liveNames().filter((name) => !holders.has(name));
    const asking = [this.opts.local, ...this.opts.peers()].map(async (peer) => {
      while (!stop.signal.aborted && Date.now() < deadline) {
        try {
          const applied = new Set(await peer.waitApplied(this.opts.local.name, lsns, Math.min(deadline - Date.now(), MAX_PEER_WAIT_MS), stop.signal));
          if (lsns.every((lsn) => applied.has(lsn))) return void holders.add(peer.name);
        } catch {
          if (stop.signal.aborted) return;
          await sleep(Math.min(this.opts.retryMs, Math.max(0, deadline - Date.now())));
        }
      }
    });
    // Decided on what the loop saw last: a member that comes back to life while the calls wind down does not undo it.
    let left = missing();
    try {
      while (left.length > 0 && Date.now() < deadline && !stop.signal.aborted) {
        await sleep(Math.min(100, Math.max(1, deadline - Date.now())));
        left = missing();
      }
    } finally {
      stop.abort();
      signal?.removeEventListener('abort', onAbort);
      await Promise.allSettled(asking);
    }
    if (left.length === 0) return { replicas: [...holders] };
    throw new ChorusError('QUORUM_TIMEOUT', `LSN ${lsns.join(', ')} is not applied on ${left.join(', ')} after ${timeoutMs} ms`);
  }

  /**
   * Resolves once `needed` replicas (this one and peers) have applied every LSN of `lsns`;
   * throws QUORUM_TIMEOUT after `timeoutMs`, or the client's abort.
   */
  async wait(lsns: number[], needed: number, timeoutMs: number, signal?: AbortSignal): Promise<{ replicas: string[] }> {
    const holders: string[] = [];
    const self = this.opts.local.name;
    if (needed <= 1 || lsns.length === 0) return { replicas: [self] };
    const started = performance.now();
    const deadline = Date.now() + timeoutMs;
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    let met!: () => void;
    const quorumMet = new Promise<void>((resolve) => (met = resolve));
    const askPeer = async (peer: QuorumPeer) => {
      while (!stop.signal.aborted) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) return;
        try {
          const applied = new Set(await peer.waitApplied(self, lsns, Math.min(remaining, MAX_PEER_WAIT_MS), stop.signal));
          if (lsns.every((lsn) => applied.has(lsn))) {
            holders.push(peer.name);
            if (holders.length >= needed) met();
            return;
          }
        } catch (err) {
          if (stop.signal.aborted) return;
          this.opts.logger.debug({ err, peer: peer.name }, 'quorum: peer did not answer; asking again');
          await sleep(Math.min(this.opts.retryMs, Math.max(0, deadline - Date.now())));
        }
      }
    };
    const asking = Promise.all([this.opts.local, ...this.opts.peers()].map(askPeer));
    try {
      await Promise.race([quorumMet, asking, new Promise<void>((resolve) => stop.signal.addEventListener('abort', () => resolve(), { once: true }))]);
    } finally {
      stop.abort();
      signal?.removeEventListener('abort', onAbort);
    }
    const seconds = (performance.now() - started) / 1000;
    if (holders.length >= needed) {
      this.opts.metrics.quorumWaits.observe({ outcome: 'met' }, seconds);
      return { replicas: holders };
    }
    this.opts.metrics.quorumWaits.observe({ outcome: signal?.aborted ? 'aborted' : 'timeout' }, seconds);
    throw new ChorusError(
      'QUORUM_TIMEOUT',
      `the insert is stored as LSN ${lsns.join(', ')} and is attached on ${holders.length} of the ${needed} replicas asked for${holders.length ? ` (${holders.join(', ')})` : ''} after ${timeoutMs} ms; ` +
        'it stays stored and keeps replicating to every replica. Sending it again is safe: it is deduplicated, and answered once the quorum holds',
    );
  }
}
