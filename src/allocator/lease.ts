import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LogEntry } from '../log/entry.js';
import type { Lease, LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import { ZooKeeperAwayError } from './allocator.js';
import type { Allocation, AllocationRequest } from './window.js';

export interface LeaseOptions {
  self: string;
  /** LSNs one lease reserves; 0 turns leases off (inserts then fail while ZooKeeper is away). */
  size: number;
  /**
   * How long the lease may lie below newer LSNs before it is replaced and what it did not use is
   * voided: until then those LSNs are gaps that hold back the part store's clean-up. A DROP
   * PARTITION or TRUNCATE above it replaces it at once (it waits for every LSN below it).
   */
  renewMs: number;
  /** While ZooKeeper is away: how often taking a new lease is tried, to learn that it is back. */
  probeMs: number;
  /** A block is deduplicated against the entries known here that are younger than this (the window's age bound). */
  dedupWindowMs: number;
}

export interface LeaseDeps {
  log: LocalLog;
  /** Allocation through the shard's allocating member (ZooKeeper). */
  allocate: (request: AllocationRequest) => Promise<Allocation[]>;
  /**
   * Allocates, records and announces a lease entry that reserves `size` LSNs for this replica
   * and closes `closes` (earlier leases of this replica), of which `used` hold entries.
   */
  takeLease: (size: number, closes: number[], used: number[]) => Promise<LogEntry>;
  announce: (entries: LogEntry[]) => void;
  metrics: Metrics;
  logger: Logger;
}

export type LeaseAllocation = Allocation & { leased?: boolean };

/** What `chorus status` shows of the lease. */
export interface LeaseStatus {
  size: number;
  /** The lease in use: first..last (0 when none). */
  first: number;
  last: number;
  free: number;
  used: number;
  zookeeperAway: boolean;
  awaySinceMs: number;
  /** Blocks allocated on leases here since start. */
  allocatedOnLease: number;
}

/**
 * Inserts through a ZooKeeper outage. Each replica keeps a lease: a few LSNs reserved for it in
 * the allocator's compare-and-set and announced as a `lease` entry. While ZooKeeper is away the
 * replica allocates its inserts from the lease, deduplicating against the block IDs its own log
 * holds (its own inserts and what gossip brought); a retry that reached another replica before
 * gossip did is stored twice, and every replica reports the pair once it holds both (LocalLog's
 * lease duplicates). While ZooKeeper is there, the lease is replaced once newer writes have lain
 * above it for `renewMs`; the owner's next lease entry closes it, naming the LSNs it used, and
 * every other one is void. Only the owner may void an LSN, and an unused leased LSN would
 * otherwise be a gap that waits forever.
 */
export class Leases {
  private away = false;
  private awaySince = 0;
  private behindSince = 0;
  private lastProbe = 0;
  private allocatedOnLease = 0;
  /** Leased LSNs handed to inserts still running, by nonce: never voided, never handed twice. */
  private readonly handed = new Map<number, string>();
  /** Block IDs of those inserts: a concurrent retry of one is its duplicate, not a second copy. */
  private readonly handedBlocks = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  /** Set while a lease entry that closes leases is being allocated: nothing may be handed out of them meanwhile. */
  private replacing = false;
  /** Lease duplicates up to this LSN have been logged. */
  private duplicatesLogged = 0;

  constructor(
    private readonly opts: LeaseOptions,
    private readonly deps: LeaseDeps,
  ) {}

  get enabled(): boolean {
    return this.opts.size > 0;
  }

  start(periodMs = Math.max(50, Math.min(250, Math.floor(this.opts.probeMs / 2)))): void {
    this.timer = setInterval(() => void this.tick(), periodMs);
    this.timer.unref();
    void this.tick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** This replica's newest lease, the one inserts use while ZooKeeper is away. */
  current(): Lease | undefined {
    return this.open().at(-1);
  }

  /** This replica's leases that no later lease of its own closed, oldest first. */
  private open(): Lease[] {
    return this.deps.log.openLeases(this.opts.self);
  }

  private free(lease: Lease, from = lease.first): number[] {
    return this.deps.log.unrecordedIn(Math.max(from, lease.first), lease.last).filter((lsn) => !this.handed.has(lsn));
  }

  status(): LeaseStatus {
    const lease = this.current();
    const free = lease ? this.free(lease).length : 0;
    const size = lease ? lease.last - lease.first + 1 : 0;
    return {
      size: this.opts.size,
      first: lease?.first ?? 0,
      last: lease?.last ?? 0,
      free,
      used: size - free,
      zookeeperAway: this.away,
      awaySinceMs: this.awaySince,
      allocatedOnLease: this.allocatedOnLease,
    };
  }

  /**
   * Allocates an insert's blocks: through ZooKeeper while it is there, else on the lease. Only a
   * failure that proves nothing was allocated (ZooKeeperAwayError) turns to the lease: any other
   * may have landed, and the same blocks must not get a second LSN.
   */
  async allocateInsert(request: AllocationRequest, table: { database: string; table: string }): Promise<LeaseAllocation[]> {
    if (this.away && this.enabled) return this.fromLease(request, table);
    // Blocks stored on a lease are not in ZooKeeper's window: a retry of one is found here, and
    // so is one still being inserted on the lease (ZooKeeper came back meanwhile).
    const known = request.blockIds.map((blockId) => (blockId ? this.holderOf(blockId, true) : undefined));
    const rest = request.blockIds.flatMap((blockId, i) => (known[i] === undefined ? [i] : []));
    try {
      const allocated = rest.length
        ? await this.deps.allocate({ ...request, blockIds: rest.map((i) => request.blockIds[i]!), tables: request.tables ? rest.map((i) => request.tables![i]!) : undefined })
        : [];
      const results: LeaseAllocation[] = known.map((lsn) => (lsn === undefined ? (undefined as unknown as LeaseAllocation) : { lsn, duplicate: true, barrier: 0 }));
      rest.forEach((i, k) => (results[i] = allocated[k]!));
      return results;
    } catch (err) {
      if (!(err instanceof ZooKeeperAwayError) || !this.enabled || !this.current()) throw err;
      this.enterAway(err.message);
      return this.fromLease(request, table);
    }
  }

  /**
   * The first LSN that holds a block among the entries known here within the dedup window (only
   * lease-allocated ones with `leasedOnly`), or that an insert running here took on the lease.
   */
  private holderOf(blockId: string, leasedOnly: boolean): number | undefined {
    const running = this.handedBlocks.get(blockId);
    if (running !== undefined) return running;
    const since = Date.now() - this.opts.dedupWindowMs;
    const holders = this.deps.log.holdersOf(blockId).filter((h) => (h.leased || !leasedOnly) && h.allocatedAtMs >= since);
    return holders.length ? Math.min(...holders.map((h) => h.lsn)) : undefined;
  }

  /**
   * Allocates on the lease. Synchronous from the read of the free LSNs to handing them out, so
   * two inserts never get the same one. An insert's LSN lies above every DROP PARTITION and
   * TRUNCATE of its table known here: an insert acknowledged after a drop must not order before it.
   */
  private fromLease(request: AllocationRequest, table: { database: string; table: string }): LeaseAllocation[] {
    // The closing being written names the LSNs used so far: one handed out now would be void in it.
    if (this.replacing) throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'this replica is replacing its lease as ZooKeeper comes back; nothing was stored, send it again');
    const lease = this.current();
    if (!lease) throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'ZooKeeper is away and this replica has no leased LSN left (its lease is used up, or it took none); nothing was stored, retry once ZooKeeper is back');
    const free = this.free(lease, this.deps.log.newestBarrier(table.database, table.table) + 1);
    const results: LeaseAllocation[] = [];
    const taken: number[] = [];
    for (const blockId of request.blockIds) {
      const holder = blockId ? this.holderOf(blockId, false) : undefined;
      if (holder !== undefined) {
        results.push({ lsn: holder, duplicate: true, barrier: 0 });
        continue;
      }
      // An earlier try of this block here still waits to learn whether ZooKeeper allocated it
      // (or for recovery to): allocated on the lease now, it could be stored twice.
      if (blockId && this.deps.log.intentHolds(blockId, request.nonce)) {
        this.release(taken, request.blockIds);
        throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'an earlier try of this block on this replica still waits for ZooKeeper to say whether it was allocated; nothing was stored, send it again later');
      }
      const lsn = free.shift();
      if (lsn === undefined) {
        this.release(taken, request.blockIds);
        throw new ChorusError(
          'ALLOCATOR_UNAVAILABLE',
          `ZooKeeper has been away for ${Math.round((Date.now() - this.awaySince) / 1000)} s and this replica's lease (LSN ${lease.first}-${lease.last}) is used up; nothing was stored, retry once ZooKeeper is back`,
        );
      }
      taken.push(lsn);
      this.handed.set(lsn, request.nonce);
      if (blockId) this.handedBlocks.set(blockId, lsn);
      results.push({ lsn, duplicate: false, barrier: this.deps.log.newestBarrier(table.database, table.table, lsn), leased: true });
    }
    this.allocatedOnLease += taken.length;
    this.deps.metrics.leaseInserts.inc(taken.length);
    return results;
  }

  /** Hands back LSNs taken by a request that is refused before it used them. */
  private release(taken: number[], blockIds: Array<string | null>): void {
    for (const t of taken) this.handed.delete(t);
    for (const b of blockIds) if (b && taken.includes(this.handedBlocks.get(b) ?? 0)) this.handedBlocks.delete(b);
  }

  /** The insert with this nonce is recorded or given up: its leased LSNs are no longer running. */
  done(nonce: string): void {
    for (const [lsn, owner] of this.handed) {
      if (owner !== nonce) continue;
      this.handed.delete(lsn);
      for (const [block, held] of this.handedBlocks) if (held === lsn) this.handedBlocks.delete(block);
    }
  }

  /** Voids leased LSNs this replica handed out and could not record (no ZooKeeper needed: they are in no window). */
  voidLeased(lsns: number[]): void {
    const voided = this.deps.log.voidUnrecorded(lsns, this.opts.self);
    if (voided.length) this.deps.announce(voided);
  }

  private enterAway(reason: string): void {
    if (this.away) return;
    this.away = true;
    this.awaySince = Date.now();
    this.lastProbe = Date.now();
    this.deps.metrics.zookeeperAway.set(1);
    const lease = this.current();
    this.deps.logger.warn({ reason, lease: lease && `${lease.first}-${lease.last}`, free: lease ? this.free(lease).length : 0 }, 'ZooKeeper is away: inserts go to this replica\'s lease');
  }

  /**
   * Keeps a lease: takes one when there is none or it is used up, and replaces it once newer
   * writes have lain above it for renewMs, or at once when a DROP PARTITION or TRUNCATE does (it
   * waits for every LSN below it). The new lease's entry closes the leases it replaces, also
   * those left from before a restart: their unused LSNs are void. While ZooKeeper is away,
   * taking a new lease is the probe that tells it is back.
   */
  async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const open = this.open();
      const current = open.at(-1);
      const now = Date.now();
      if (!this.enabled) {
        // Leases turned off: what is left of them is closed (one entry), nothing new reserved.
        if (open.length) await this.take(0, open);
        return;
      }
      // The lease in use is closed only once ZooKeeper is back: closing it while away would stop
      // inserts on it for as long as each probe waits (see `replacing`).
      let closing = open;
      if (this.away) {
        if (now - this.lastProbe < this.opts.probeMs) return;
        this.lastProbe = now;
        closing = [];
      } else {
        // Only writes above count: other replicas' leases lie above every lease, and replacing
        // for them would never end.
        const behind = current !== undefined && this.deps.log.maxWrittenLsn() > current.last;
        if (!behind) this.behindSince = 0;
        else if (this.behindSince === 0) this.behindSince = now;
        const needed =
          !current ||
          this.free(current).length === 0 ||
          this.deps.log.newestTableOp() > current.last ||
          (behind && now - this.behindSince >= this.opts.renewMs);
        if (!needed) {
          // Older leases (the one used while ZooKeeper was away, those from before a restart)
          // are closed by an entry that reserves nothing.
          if (open.length > 1) await this.take(0, open.slice(0, -1));
          return;
        }
      }
      try {
        await this.take(this.opts.size, closing);
      } catch (err) {
        if (err instanceof ZooKeeperAwayError) {
          if (this.current()) this.enterAway(err.message);
        } else this.deps.logger.warn({ err: (err as Error).message }, 'could not take a new lease; will retry');
        return;
      }
      this.behindSince = 0;
      if (this.away) {
        this.away = false;
        this.deps.metrics.zookeeperAway.set(0);
        this.deps.logger.warn({ awayMs: now - this.awaySince, allocatedOnLease: this.allocatedOnLease }, 'ZooKeeper is back: inserts are allocated through it again');
      }
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'lease round failed; will retry');
    } finally {
      this.updateMetrics();
      this.ticking = false;
    }
  }

  /** Takes a lease of `size` LSNs that closes `closing`: what they hold, or inserts still running hold, is used; the rest is void. */
  private async take(size: number, closing: Lease[]): Promise<void> {
    this.replacing = closing.length > 0;
    try {
      await this.takeClosing(size, closing);
    } finally {
      this.replacing = false;
    }
  }

  private async takeClosing(size: number, closing: Lease[]): Promise<void> {
    const used = closing.flatMap((l) => {
      const recorded = new Set(this.deps.log.recordedIn(l.first, l.last));
      for (const lsn of this.handed.keys()) if (lsn >= l.first && lsn <= l.last) recorded.add(lsn);
      return [...recorded];
    });
    const entry = await this.deps.takeLease(size, closing.map((l) => l.lsn), used.sort((a, b) => a - b));
    if (closing.length) {
      this.deps.logger.info({ closed: closing.map((l) => `${l.first}-${l.last}`), used: used.length, lease: size ? `${entry.lsn + 1}-${entry.lsn + size}` : 'none' }, 'replaced the lease; its unused LSNs are void');
    }
  }

  private updateMetrics(): void {
    const s = this.status();
    this.deps.metrics.leaseLsns.set({ state: 'free' }, s.free);
    this.deps.metrics.leaseLsns.set({ state: 'used' }, s.used);
    const duplicates = this.deps.log.leaseDuplicates();
    this.deps.metrics.leaseDuplicates.set(duplicates.length);
    const fresh = duplicates.filter((d) => d.lsn > this.duplicatesLogged);
    if (fresh.length) {
      this.duplicatesLogged = Math.max(...fresh.map((d) => d.lsn));
      this.deps.logger.warn(
        { duplicates: fresh.map((d) => `${d.table}: LSN ${d.lsn} (${d.origins[0]}) and ${d.duplicateOf} (${d.origins[1]})`) },
        'blocks stored twice: a retry reached another replica while ZooKeeper was away, and both took it on their leases',
      );
    }
  }
}
