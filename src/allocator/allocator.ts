import { randomBytes } from 'node:crypto';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';
import { sleep } from '../core/async.js';
import { ZkSession, isZkError, ZK_BAD_VERSION, ZK_NODE_EXISTS, type ZkOp } from './zk.js';
import { decodeChunk, decodeHead, encodeChunk, encodeHead, slotPath } from './codec.js';
import {
  applyBatch,
  chunkKey,
  chunksToWrite,
  chunkVersion,
  removeLsns,
  type Allocation,
  type AllocationRequest,
  type AllocatorState,
  type SealedChunk,
  type WindowLimits,
} from './window.js';

export interface AllocatorOptions {
  path: string;
  window: WindowLimits;
  maxBatch: number;
  /** How long one request may wait for ZooKeeper before it is answered with an error. */
  requestTimeoutMs: number;
  /** Requests waiting at once; more are refused at once. */
  maxQueued?: number;
  /** How long past its requests' deadline a batch of unknown outcome is still re-read and retried. */
  unknownOutcomeRetryMs?: number;
  /**
   * When set (leases are on), a request is refused with ZooKeeperAwayError once ZooKeeper has
   * been unreachable this long, instead of waiting out its deadline: its replica then inserts on
   * its lease, and every insert would otherwise wait the whole deadline first.
   */
  awayAfterMs?: number;
}

/**
 * An allocation refused without anything sent to ZooKeeper for it, because ZooKeeper could not
 * be reached: nothing was allocated to the request anywhere, so it may be allocated otherwise.
 */
export class ZooKeeperAwayError extends ChorusError {
  constructor(message: string) {
    super('ALLOCATOR_UNAVAILABLE', message);
  }
}

export interface AllocatorObserver {
  onBatch?(size: number, zkMillis: number): void;
  /** `bytes`: what a write sent (the data of every znode it sets or creates). */
  onZkRequest?(kind: 'getData' | 'setData' | 'multi', bytes?: number): void;
}

interface Pending {
  request: AllocationRequest;
  resolve: (value: Allocation[]) => void;
  reject: (err: Error) => void;
  deadline: number;
}

export function newNonce(): string {
  return randomBytes(6).toString('base64url');
}

/**
 * The only ZooKeeper user: one znode per shard holding the next LSN and the newest part of the
 * dedup window, and a fixed handful of chunk znodes below it holding the rest (window.ts).
 * Requests that arrive while a write is in flight are group-committed into the next write.
 * The last state written is cached with its version, so a replica that is the shard's only
 * writer spends exactly one setData per batch; a stale cache costs one BadVersion and one read.
 * A batch of duplicates only, or a release with nothing to remove, is never concluded from the
 * cache: it costs one read.
 */
export class Allocator {
  private queue: Pending[] = [];
  private running = false;
  private cached: { state: AllocatorState; version: number } | null = null;
  private stopped = false;

  constructor(
    private readonly zk: ZkSession,
    private readonly opts: AllocatorOptions,
    private readonly log: Logger,
    private readonly observer: AllocatorObserver = {},
  ) {}

  /** Waits up to `connectTimeoutMs` (the session's own timeout by default) for ZooKeeper to answer. */
  async init(connectTimeoutMs?: number): Promise<void> {
    if (!this.zk.isConnected) this.log.info({ path: this.opts.path, waitMs: connectTimeoutMs }, 'waiting for ZooKeeper');
    await this.zk.waitConnected(connectTimeoutMs);
    if (!(await this.zk.exists(this.opts.path))) await this.zk.mkdirp(this.opts.path);
    await this.zk.protect(this.opts.path);
    const { state } = await this.refresh();
    this.log.info({ path: this.opts.path, next: state.next }, 'allocator ready');
  }

  get usable(): boolean {
    return this.zk.isConnected;
  }

  /** The next LSN as last seen; only a hint (another replica may have allocated since). */
  get lastSeenNext(): number {
    return this.cached?.state.next ?? 0;
  }

  /** Sealed chunks as last read or written, by version: they are immutable, so a refresh reads only new ones. */
  private chunks = new Map<string, SealedChunk>();
  /** Slots found to exist although the head did not count them (a write interrupted by hand, say). */
  private knownSlots = 0;

  /**
   * Reads the head and the chunks it names into the cache, and returns what it read (another
   * call may clear the cache meanwhile). A chunk rewritten between the two reads is read again
   * with the head.
   */
  private async refresh(): Promise<{ state: AllocatorState; version: number }> {
    for (let attempt = 1; ; attempt++) {
      // Each retry follows a write that landed in between: a handful means a znode this code cannot read as named.
      if (attempt > 20) throw new ChorusError('INTERNAL', `the allocator's chunk znodes under ${this.opts.path} do not match what its head names`);
      this.observer.onZkRequest?.('getData');
      const { data, stat } = await this.zk.getData(this.opts.path);
      const head = decodeHead(data);
      const sealed: SealedChunk[] = [];
      for (const ref of head.sealed) {
        let chunk = this.chunks.get(chunkKey(ref.slot, ref.sealId, ref.count));
        if (!chunk) {
          this.observer.onZkRequest?.('getData');
          chunk = decodeChunk((await this.zk.getData(slotPath(this.opts.path, ref.slot))).data, ref);
          if (!chunk) break;
        }
        sealed.push(chunk);
      }
      if (sealed.length !== head.sealed.length) continue;
      this.chunks = new Map(sealed.map((c) => [chunkVersion(c), c]));
      this.cached = { state: { next: head.next, slots: head.slots, sealed, open: head.open }, version: stat.version };
      return this.cached;
    }
  }

  /**
   * Compare-and-set of the head from `base` to `state`: one setData, or one multi that also
   * writes the chunks sealed or rewritten since. Returns the head's new version.
   */
  private async write(base: { state: AllocatorState; version: number }, state: AllocatorState): Promise<number> {
    const head = encodeHead(state);
    const chunks = chunksToWrite(base.state, state);
    if (chunks.length === 0) {
      this.observer.onZkRequest?.('setData', head.length);
      return (await this.zk.setData(this.opts.path, head, base.version)).version;
    }
    const created = Math.max(base.state.slots, this.knownSlots);
    const ops: ZkOp[] = [{ op: 'setData', path: this.opts.path, data: head, version: base.version }];
    for (const c of chunks) {
      const path = slotPath(this.opts.path, c.slot);
      const data = encodeChunk(c);
      ops.push(c.slot < created ? { op: 'setData', path, data, version: -1 } : { op: 'create', path, data });
    }
    this.observer.onZkRequest?.('multi', ops.reduce((sum, op) => sum + op.data.length, 0));
    try {
      const { version } = await this.zk.multi(ops);
      this.chunks = new Map(state.sealed.map((c) => [chunkVersion(c), c]));
      return version;
    } catch (err) {
      // Only a slot the head did not count can exist already: rewritten, not created, next time.
      if (isZkError(err, ZK_NODE_EXISTS)) this.knownSlots = Math.max(...chunks.map((c) => c.slot + 1), this.knownSlots);
      throw err;
    }
  }

  private nextRead: Promise<number> | null = null;

  /**
   * Reads the next LSN again (one getData); callers that ask while a read is in flight share it,
   * so checks of received entries never queue ZooKeeper requests.
   */
  refreshNext(): Promise<number> {
    this.nextRead ??= this.refresh()
      .then((read) => read.state.next)
      .finally(() => {
        this.nextRead = null;
      });
    return this.nextRead;
  }

  async read(): Promise<AllocatorState> {
    return (await this.refresh()).state;
  }

  /** Whether ZooKeeper has been unreachable for at least `awayAfterMs` (always false without it). */
  get away(): boolean {
    return this.opts.awayAfterMs !== undefined && this.zk.unreachableForMs >= this.opts.awayAfterMs;
  }

  allocate(request: AllocationRequest): Promise<Allocation[]> {
    if (this.away) return Promise.reject(new ZooKeeperAwayError(`ZooKeeper unreachable for ${Math.round(this.zk.unreachableForMs / 1000)} s; nothing was allocated`));
    if (this.stopped) return Promise.reject(new ChorusError('SHUTTING_DOWN', 'allocator is stopped'));
    if (this.queue.length >= (this.opts.maxQueued ?? Infinity)) {
      return Promise.reject(new ChorusError('ALLOCATOR_UNAVAILABLE', `${this.queue.length} allocations are waiting for ZooKeeper already; nothing was allocated, send it again later`));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject, deadline: Date.now() + this.opts.requestTimeoutMs });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const now = Date.now();
        for (const p of this.queue.filter((p) => p.deadline < now)) {
          // Nothing of an expired request was written in a batch that is still unresolved:
          // it is only dropped between attempts, after its last attempt's outcome is known.
          p.reject(new ChorusError('ALLOCATOR_UNAVAILABLE', 'ZooKeeper did not accept the allocation in time; nothing was allocated'));
        }
        this.queue = this.queue.filter((p) => p.deadline >= now);
        const batch = this.queue.splice(0, this.opts.maxBatch);
        if (batch.length === 0) break;
        await this.commit(batch);
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * Retries until the batch's outcome is known, or until `unknownOutcomeRetryMs` past its
   * deadline. Every retry re-reads, so nothing is allocated twice. A batch given up on while
   * its write's outcome is unknown is answered with an error that says so: its inserts are not
   * acknowledged, their intents stay recorded (recovery reads the window by nonce and records
   * or discards them), and a client's retry of the same rows is deduplicated if it landed.
   */
  private async commit(batch: Pending[]): Promise<void> {
    const started = Date.now();
    let attempt = 0;
    // Set once a setData was sent without a known result: from then on the batch may only be
    // answered "allocated" after a read tells what happened.
    let uncertain = false;
    const lastDeadline = Math.max(...batch.map((p) => p.deadline));
    for (;;) {
      attempt++;
      let sent = false;
      try {
        const fresh = !this.cached;
        // With leases on, a batch waits for ZooKeeper only as long as it takes to call it away.
        if (this.opts.awayAfterMs !== undefined && !uncertain) await this.zk.waitConnected(this.opts.awayAfterMs);
        const base = this.cached ?? (await this.refresh());
        const { state, results, changed } = applyBatch(base.state, batch.map((p) => p.request), this.opts.window);
        // A batch of duplicates writes nothing, so no BadVersion would tell a stale cache: another
        // member may have released a voided LSN since, and its block must then be allocated anew.
        // Duplicates (retries) are rare; they are answered from the znode as it is now.
        if (!changed && !fresh) {
          this.cached = null;
          continue;
        }
        if (changed) {
          // Waiting for the session is not sending: a write never sent has a known outcome (none).
          await this.zk.waitConnected();
          sent = true;
          this.cached = { state, version: await this.write(base, state) };
        }
        this.observer.onBatch?.(batch.length, Date.now() - started);
        batch.forEach((p, i) => p.resolve(results[i]!));
        return;
      } catch (err) {
        this.cached = null;
        if (isZkError(err, ZK_BAD_VERSION) || isZkError(err, ZK_NODE_EXISTS)) continue;
        if (sent) uncertain = true;
        const now = Date.now();
        if (!uncertain && (this.away || batch.every((p) => p.deadline < now))) {
          batch.forEach((p) => p.reject(new ZooKeeperAwayError(`ZooKeeper unavailable; nothing was allocated (${(err as Error).message})`)));
          return;
        }
        if (uncertain && now > lastDeadline + (this.opts.unknownOutcomeRetryMs ?? Infinity)) {
          this.log.error({ err, attempt, nonces: batch.map((p) => p.request.nonce) }, 'allocation outcome unknown; giving up, recovery resolves the intents');
          batch.forEach((p) =>
            p.reject(
              new ChorusError(
                'ALLOCATOR_UNAVAILABLE',
                `ZooKeeper did not confirm the allocation; whether it landed is unknown, so the insert is not acknowledged. Send it again: if it landed, the retry is deduplicated (${(err as Error).message})`,
              ),
            ),
          );
          return;
        }
        // Connection loss or timeout: the write may or may not have landed. The next attempt
        // re-reads and recognises this batch's own entries by nonce.
        this.log.warn({ err, attempt }, 'allocation attempt failed, re-reading');
        // Requests queued behind this batch were never sent: once ZooKeeper is away they go to
        // their replica's lease instead of waiting for this batch's outcome.
        if (this.away) {
          for (const p of this.queue.splice(0)) p.reject(new ZooKeeperAwayError('ZooKeeper unavailable; nothing was allocated'));
        }
        if (this.stopped) {
          batch.forEach((p) => p.reject(new ChorusError('SHUTTING_DOWN', 'allocator stopped during allocation')));
          return;
        }
        await sleep(Math.min(1000, 50 * attempt));
      }
    }
  }

  /** Removes voided LSNs from the window (compare-and-set, retried on conflicts). */
  async release(lsns: number[]): Promise<void> {
    for (;;) {
      const fresh = !this.cached;
      const base = this.cached ?? (await this.refresh());
      const { state, changed } = removeLsns(base.state, lsns);
      // Nothing to remove is believed only from the znode itself: a member that does not
      // allocate caches what it read at start, and would otherwise leave the voided LSNs in.
      if (!changed && !fresh) {
        this.cached = null;
        continue;
      }
      if (!changed) return;
      try {
        this.cached = { state, version: await this.write(base, state) };
        return;
      } catch (err) {
        this.cached = null;
        if (!isZkError(err, ZK_BAD_VERSION) && !isZkError(err, ZK_NODE_EXISTS)) throw err;
      }
    }
  }

  stop(): void {
    this.stopped = true;
  }
}
