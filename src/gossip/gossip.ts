import * as grpc from '@grpc/grpc-js';
import { ZooKeeperAwayError, type Allocator } from '../allocator/allocator.js';
import { MAX_LEASE_SIZE, type Allocation, type AllocationRequest } from '../allocator/window.js';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';
import type { Digest, LogEntry } from '../log/entry.js';
import { validateEntry } from '../log/validate.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Peer, PushedPart } from './peers.js';
import { chorusV1 } from './proto.js';
import { Swim, type SwimOptions } from './swim.js';
import { MAX_PEER_WAIT_MS, MAX_WAIT_LSNS, waitApplied } from '../replication/quorum.js';

export interface GossipOptions {
  self: string;
  intervalMs: number;
  rpcTimeoutMs: number;
  allocateTimeoutMs: number;
  /** At most this many entries in one reply or push. */
  maxEntriesPerMessage: number;
  /**
   * And about this many bytes (entries as stored JSON), below gRPC's 4 MiB message limit; one
   * entry travels alone whatever its size (the validator bounds it well below the limit).
   */
  maxMessageBytes: number;
  /**
   * Received LSNs below the allocator's last seen next LSN plus this many are taken without
   * asking ZooKeeper; one beyond it costs one read of the allocator's znode (shared by every
   * batch waiting for it), and is refused if it is at or beyond the next LSN read.
   */
  lsnAllowance: number;
  swim: SwimOptions;
  /**
   * The replica name the caller's TLS client certificate proves, or null when the transport is
   * not authenticated (`tls.insecure`). Whatever a message says about its sender is checked
   * against it.
   */
  identify?: (call: grpc.ServerUnaryCall<unknown, unknown>) => string | null;
  /** Small parts sent inside pushes, so that followers need not fetch them; absent: never. */
  pushedParts?: PushedParts;
  /** A test fault: while true, no entries are sent or taken (Faults.isolateGossip). */
  isolated?: () => boolean;
}

/**
 * Parts that travel with their entries. A push is one gRPC call the origin makes anyway; a part
 * inside it saves the follower an interserver request (and the origin two reads of the files)
 * per insert. Anything that goes wrong here only means the part is fetched as before.
 */
export interface PushedParts {
  /** Largest part (all its files) sent inside a push, in bytes. */
  maxPartBytes: number;
  /** Inline bytes held for one peer's pushes at most; beyond it entries go without their parts (a peer that is slow or away). */
  maxQueuedBytes: number;
  /** An entry's part as one transfer sends it, or null when it cannot be read here. Read once for every peer. */
  read(entry: LogEntry): Buffer | null;
  /** What of it goes to one peer: the part itself, but a test fault may corrupt one copy. */
  send(data: Buffer): Buffer;
  /**
   * Stores parts that came with entries this replica has just added to its log, in the
   * background: the push is answered at once, so that the next one is not held up by these
   * fsyncs (entries waiting behind a slow push would be pulled by an exchange without their
   * parts). It must keep the applier off those entries, before its first await, until they are
   * stored or refused. It never throws.
   */
  store(parts: Array<{ entry: LogEntry; data: Buffer }>, from: string): Promise<void>;
}

/** Part bytes in one push message at most, besides its entries (gRPC refuses messages over 4 MiB; entries take at most 3). */
const PUSHED_PART_BYTES_PER_MESSAGE = 1024 * 1024;

interface Outgoing {
  entry: LogEntry;
  part: Buffer | null;
}

/** Ranges in one digest: a replica's known LSNs above its watermark are a few gaps, not millions. */
const MAX_DIGEST_RANGES = 10_000;

/** Exchanges in a row that may bring only entries already here before a full pull gives up. */
const PULL_ROUNDS_WITHOUT_PROGRESS = 3;

/**
 * Log dissemination between the sidecars of a shard: push on append, periodic digest
 * exchange with a random peer to pull (and push back) what either side lacks, and the
 * forwarding of allocation requests to the shard's allocating replica. Nothing a peer sends is
 * taken blindly: its claimed name must be the one its transport proves, every entry passes
 * validateEntry and an LSN bound, and a peer's progress is recorded only from the peer itself.
 */
export class Gossip {
  private timer: NodeJS.Timeout | null = null;
  /** The exchange running now, if any: a full pull waits for it rather than skipping. */
  private exchanging: Promise<unknown> | null = null;
  /**
   * The highest next LSN read from the allocator by this replica's checks. It starts from the log
   * as this process found it (every LSN there was checked when stored), so that a sidecar that
   * starts while ZooKeeper is away, on its lease, still takes what its peers insert on theirs.
   * Only reads of the allocator raise it afterwards, never what peers send.
   */
  private verifiedNext: number;
  private lastNextReadAt = 0;
  private readonly peerNames: ReadonlySet<string>;
  private readonly memberNames: ReadonlySet<string>;
  readonly swim: Swim;

  constructor(
    private readonly opts: GossipOptions,
    private readonly peers: Peer[],
    private readonly log: LocalLog,
    private readonly allocator: Allocator,
    private readonly onNewEntries: (entries: LogEntry[]) => void,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {
    this.swim = new Swim(opts.self, peers, opts.swim, logger.child({ component: 'membership' }));
    this.peerNames = new Set(peers.map((p) => p.name).filter((n) => n !== opts.self));
    this.memberNames = new Set([...this.peerNames, opts.self]);
    this.verifiedNext = log.maxLsn() + 1;
  }

  /**
   * The sender of a call: the name its certificate proves, which the message's claim must match;
   * without TLS, the claim itself, which must at least be a configured peer.
   */
  private sender(call: grpc.ServerUnaryCall<unknown, unknown>, claimed: string, rpc: string): { name: string; proven: boolean } {
    const proven = this.opts.identify?.(call) ?? null;
    const refuse = (why: string): never => {
      this.metrics.gossipRefusedMessages.inc({ rpc });
      this.logger.warn({ rpc, claimed: claimed.slice(0, 100), proven, peer: call.getPeer() }, `gossip ${rpc} refused: ${why}`);
      throw new ChorusError('PERMISSION_DENIED', why);
    };
    if (proven !== null) {
      if (claimed !== proven) refuse(`the message says it is from ${JSON.stringify(claimed.slice(0, 100))} but the caller's certificate is ${proven}'s`);
      if (!this.peerNames.has(proven)) refuse(`${proven} is not a peer of this replica`);
      // A decommissioned member may still pull (an exchange), which is how one that comes back
      // learns it was decommissioned and stops taking inserts; nothing it says is taken.
      if (rpc !== 'exchange' && this.swim.members.get(proven)?.state === 'decommissioned') refuse(`${proven} is decommissioned`);
      return { name: proven, proven: true };
    }
    if (!this.peerNames.has(claimed)) refuse(`${JSON.stringify(claimed.slice(0, 100))} is not a configured peer`);
    return { name: claimed, proven: false };
  }

  /** The gRPC handlers of the Gossip service, to be added to the replica's server. */
  register(server: grpc.Server): void {
    const Gossip = chorusV1('chorus/v1/gossip.proto').Gossip!;
    server.addService(Gossip.service, {
      ...this.swim.handlers((call, claimed) => {
        try {
          this.sender(call, claimed, 'ping');
          return null;
        } catch (err) {
          return toGrpcError(err);
        }
      }),
      push: (call: grpc.ServerUnaryCall<{ from: string; entries: unknown[]; parts?: Array<{ lsn: number; data: Buffer }> }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        let from: string;
        try {
          if (this.opts.isolated?.()) throw new ChorusError('PEER_UNAVAILABLE', 'gossip isolated by a test fault');
          from = this.sender(call, call.request.from, 'push').name;
        } catch (err) {
          return cb(toGrpcError(err));
        }
        this.metrics
          .timed('follower', 'gossip.receive', () => this.receive(call.request.entries, from, call.request.parts))
          .then(({ added, refused }) => {
            if (refused.length) cb(toGrpcError(new ChorusError('INVALID_ENTRY', `${refused.length} of ${call.request.entries.length} entries refused (${refused[0]})`)));
            else cb(null, { added: added.length });
          })
          .catch((err: unknown) => cb(toGrpcError(err)));
      },
      exchange: (call: grpc.ServerUnaryCall<Digest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        try {
          if (this.opts.isolated?.()) throw new ChorusError('PEER_UNAVAILABLE', 'gossip isolated by a test fault');
          const theirs = call.request;
          const sender = this.sender(call, theirs.from, 'exchange');
          if (theirs.knownAbove.length > MAX_DIGEST_RANGES) throw new ChorusError('INVALID_ENTRY', `a digest with ${theirs.knownAbove.length} ranges (at most ${MAX_DIGEST_RANGES})`);
          // Progress decides what GC deletes: only what a member says of itself, proven by its
          // certificate, counts. Without TLS the claim proves nothing, and this replica learns the
          // peer's progress from its own exchanges with it instead (the peer it dialed).
          if (sender.proven && this.swim.members.get(sender.name)?.state !== 'decommissioned') {
            this.log.setPeerProgress(sender.name, Number(theirs.appliedWatermark), Number(theirs.maxLsn));
          }
          cb(null, { digest: this.log.digest(this.opts.self), entries: this.log.missingFrom(theirs, this.opts.maxEntriesPerMessage, this.opts.maxMessageBytes) });
        } catch (err) {
          cb(toGrpcError(err));
        }
      },
      allocate: (call: grpc.ServerUnaryCall<{ from: string; nonce: string; blockIds: string[]; tables: string[]; reserve: number }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        const { from, nonce, blockIds, tables, reserve } = call.request;
        try {
          this.sender(call, from, 'allocate');
          if (reserve > MAX_LEASE_SIZE) throw new ChorusError('INVALID_ENTRY', `a lease of ${reserve} LSNs asked for (at most ${MAX_LEASE_SIZE})`);
        } catch (err) {
          return cb(toGrpcError(err));
        }
        this.allocator
          .allocate({ origin: from, nonce, blockIds: blockIds.map((b) => b || null), tables: tables.length ? tables : undefined, reserve: reserve || undefined })
          .then((allocations) => cb(null, { allocations }))
          .catch((err: unknown) => (err instanceof ZooKeeperAwayError ? cb(null, { allocations: [], zookeeperAway: err.message }) : cb(toGrpcError(err))));
      },
      waitApplied: (call: grpc.ServerUnaryCall<{ from: string; lsns: Array<number | string>; timeoutMs: number }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        try {
          this.sender(call, call.request.from, 'wait_applied');
          const lsns = call.request.lsns.map(Number);
          if (lsns.length === 0 || lsns.length > MAX_WAIT_LSNS || !lsns.every((l) => Number.isSafeInteger(l) && l > 0)) {
            throw new ChorusError('INVALID_ENTRY', `wait for ${lsns.length} LSNs: between 1 and ${MAX_WAIT_LSNS} positive LSNs`);
          }
          const stop = new AbortController();
          call.on('cancelled', () => stop.abort());
          waitApplied(this.log, lsns, Math.min(call.request.timeoutMs, MAX_PEER_WAIT_MS), stop.signal)
            .then((applied) => cb(null, { applied }))
            .catch((err: unknown) => cb(toGrpcError(err)));
        } catch (err) {
          cb(toGrpcError(err));
        }
      },
    });
  }

  start(): void {
    this.swim.start();
    const tick = () => {
      void this.exchangeOnce().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, this.opts.intervalMs);
      });
    };
    this.timer = setTimeout(tick, this.opts.intervalMs);
  }

  stop(): void {
    this.swim.stop();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /**
   * The LSN every received entry must stay below. The allocator's cached next LSN (plus the
   * allowance) answers without ZooKeeper; beyond it, one read of the znode decides.
   */
  private async lsnBound(highest: number): Promise<{ bound: number; verified: boolean }> {
    // The allocator forgets its cache on a ZooKeeper error; what it saw before still holds.
    this.verifiedNext = Math.max(this.verifiedNext, this.allocator.lastSeenNext);
    const cached = this.verifiedNext;
    if (highest < cached + this.opts.lsnAllowance) return { bound: cached + this.opts.lsnAllowance, verified: true };
    // At most one read per exchange interval, however many messages claim LSNs beyond: a peer
    // cannot turn its messages into ZooKeeper load. What waits is pulled at a later exchange.
    if (Date.now() - this.lastNextReadAt < this.opts.intervalMs) return { bound: cached + this.opts.lsnAllowance, verified: false };
    this.lastNextReadAt = Date.now();
    try {
      this.verifiedNext = Math.max(this.verifiedNext, await this.allocator.refreshNext());
      return { bound: this.verifiedNext, verified: true };
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'could not read the next LSN to check received entries; entries beyond the last one seen wait');
      return { bound: cached + this.opts.lsnAllowance, verified: false };
    }
  }

  /**
   * Validates and stores entries from `from`. Refused ones are not stored, counted and logged
   * with their sender; their reasons are returned (the caller answers INVALID_ARGUMENT).
   */
  private async receive(raw: unknown[], from: string, parts: Array<{ lsn: number; data: Buffer }> = []): Promise<{ added: LogEntry[]; conflicts: number; refused: string[] }> {
    if (raw.length > this.opts.maxEntriesPerMessage) {
      this.metrics.gossipRefusedEntries.inc({ reason: 'too_many' }, raw.length);
      this.logger.warn({ from, entries: raw.length }, 'a message with too many entries refused');
      throw new ChorusError('INVALID_ENTRY', `${raw.length} entries in one message (at most ${this.opts.maxEntriesPerMessage})`);
    }
    const valid: LogEntry[] = [];
    const refused: string[] = [];
    const refuse = (reason: string, why: string, lsn: unknown) => {
      this.metrics.gossipRefusedEntries.inc({ reason });
      this.logger.warn({ from, lsn: String(lsn).slice(0, 30), why }, 'entry from a peer refused');
      refused.push(`LSN ${String(lsn).slice(0, 30)}: ${why}`);
    };
    for (const r of raw) {
      try {
        valid.push(validateEntry(r, { members: this.memberNames }));
      } catch (err) {
        refuse('invalid', (err as Error).message, (r as { lsn?: unknown } | null)?.lsn);
      }
    }
    const highest = valid.reduce((m, e) => Math.max(m, e.lsn), 0);
    const { bound, verified } = valid.length ? await this.lsnBound(highest) : { bound: 0, verified: true };
    const storable = valid.filter((e) => {
      if (e.lsn < bound) return true;
      if (verified) refuse('beyond_next_lsn', `LSN ${e.lsn} has not been allocated (the next LSN is ${bound})`, e.lsn);
      else refuse('unverifiable', `LSN ${e.lsn} is beyond the last next LSN seen (${bound}) and ZooKeeper cannot be asked now; it is taken when pulled later`, e.lsn);
      return false;
    });
    const { added, conflicts } = this.metrics.timed('follower', 'log.add', () => this.log.addEntries(storable, 'pending', from));
    this.applyDecommissions(added);
    if (parts.length && this.opts.pushedParts) {
      // Only entries stored just now, and checked against the log's own copy: a part for an
      // entry already here (or refused) is dropped and the applier goes its usual way.
      const data = new Map(parts.map((p) => [Number(p.lsn), p.data]));
      const carried = added.flatMap((entry) => {
        const part = entry.kind === 'insert' ? data.get(entry.lsn) : undefined;
        return part ? [{ entry, data: part }] : [];
      });
      if (carried.length) void this.opts.pushedParts.store(carried, from);
    }
    if (added.length) this.onNewEntries(added);
    return { added, conflicts: conflicts.length, refused };
  }

  /** A decommission entry, once stored here (received, or recorded here), removes its member. */
  private applyDecommissions(entries: LogEntry[]): void {
    for (const e of entries) {
      if (e.kind === 'decommission' && e.member && this.swim.members.decommission(e.member)) {
        this.logger.warn({ member: e.member, lsn: e.lsn, origin: e.origin }, `member ${e.member} decommissioned (log entry ${e.lsn})`);
      }
    }
  }

  /**
   * Sends new entries (recorded here) to every peer at once; a peer that misses them pulls them
   * later. Entries announced while a push to a peer is in flight go together in the next one.
   */
  broadcast(entries: LogEntry[]): void {
    this.applyDecommissions(entries);
    if (this.opts.isolated?.()) return;
    const outgoing = entries.map((entry) => ({ entry, part: this.partToPush(entry) }));
    for (const peer of this.peers) {
      // A peer that is away or slow gets entries without parts rather than a growing backlog of bytes.
      const queued = this.outboxPartBytes.get(peer.name) ?? 0;
      let budget = this.swim.isAlive(peer.name) && peer.healthy ? (this.opts.pushedParts?.maxQueuedBytes ?? 0) - queued : 0;
      const items = outgoing.map((o) => {
        if (!o.part || o.part.length > budget) return { entry: o.entry, part: null };
        budget -= o.part.length;
        return { entry: o.entry, part: this.opts.pushedParts!.send(o.part) };
      });
      this.outboxPartBytes.set(peer.name, queued + items.reduce((sum, o) => sum + (o.part?.length ?? 0), 0));
      const queue = this.outbox.get(peer.name);
      if (queue) queue.push(...items);
      else this.outbox.set(peer.name, items);
      if (!this.pushing.has(peer.name)) void this.flush(peer);
    }
  }

  private partToPush(entry: LogEntry): Buffer | null {
    const parts = this.opts.pushedParts;
    if (!parts || entry.kind !== 'insert' || entry.origin !== this.opts.self) return null;
    // An entry's bytes are the sum of its files' sizes (validateEntry checks it).
    if (entry.bytes > parts.maxPartBytes) return null;
    return parts.read(entry);
  }

  private outbox = new Map<string, Outgoing[]>();
  private outboxPartBytes = new Map<string, number>();
  private pushing = new Set<string>();

  private async flush(peer: Peer): Promise<void> {
    this.pushing.add(peer.name);
    try {
      for (;;) {
        const items = this.outbox.get(peer.name) ?? [];
        this.outbox.delete(peer.name);
        this.outboxPartBytes.delete(peer.name);
        if (items.length === 0) return;
        const parts = new Map(items.flatMap((o) => (o.part ? [[o.entry.lsn, o.part] as const] : [])));
        for (const batch of messagesOf(items.map((o) => o.entry), this.opts.maxEntriesPerMessage, this.opts.maxMessageBytes)) {
          try {
            await peer.push(this.opts.self, batch, this.opts.rpcTimeoutMs, partsOf(batch, parts, PUSHED_PART_BYTES_PER_MESSAGE));
            this.metrics.gossipRounds.inc({ kind: 'push', outcome: 'ok' });
          } catch (err) {
            this.metrics.gossipRounds.inc({ kind: 'push', outcome: 'error' });
            this.logger.debug({ peer: peer.name, err: (err as Error).message }, 'push failed; the peer will pull');
          }
        }
      }
    } finally {
      this.pushing.delete(peer.name);
    }
  }

  /** One anti-entropy round with a random live peer: pull what we lack, push what it lacks. */
  async exchangeOnce(peer = this.randomLivePeer()): Promise<void> {
    if (!peer || this.exchanging || this.opts.isolated?.()) return;
    try {
      await this.exclusive(() => this.exchangeWith(peer));
      this.metrics.gossipRounds.inc({ kind: 'exchange', outcome: 'ok' });
    } catch (err) {
      this.metrics.gossipRounds.inc({ kind: 'exchange', outcome: 'error' });
      this.logger.debug({ peer: peer.name, err: (err as Error).message }, 'digest exchange failed');
    }
  }

  /** Runs `fn` once no other exchange runs (one at a time, so rounds never overlap). */
  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exchanging) await this.exchanging.catch(() => undefined);
    const run = fn();
    this.exchanging = run;
    try {
      return await run;
    } finally {
      this.exchanging = null;
    }
  }

  /** One exchange; returns how many entries the peer sent and how many were new here. Throws on failure. */
  private async exchangeWith(peer: Peer): Promise<{ received: number; added: number; conflicts: number; refused: string[] }> {
    const reply = await peer.exchange(this.log.digest(this.opts.self), this.opts.rpcTimeoutMs);
    const { added, conflicts, refused } = await this.receive(reply.entries, peer.name);
    // The peer dialed is the one whose address (and, with TLS, certificate) is configured: its
    // digest speaks for itself, whatever name it carries.
    this.log.setPeerProgress(peer.name, Number(reply.digest.appliedWatermark), Number(reply.digest.maxLsn));
    const theyLack = this.log.missingFrom(reply.digest, this.opts.maxEntriesPerMessage, this.opts.maxMessageBytes);
    if (theyLack.length) await peer.push(this.opts.self, theyLack, this.opts.rpcTimeoutMs);
    return { received: reply.entries.length, added: added.length, conflicts, refused };
  }

  /**
   * Pulls everything `peer` holds that this replica lacks: waits for a running exchange, then
   * exchanges until a round brings nothing. Throws when the peer cannot be reached or sends
   * entries this replica refuses (what it holds is then not known here).
   */
  async pullAll(peer: Peer): Promise<number> {
    let total = 0;
    // A round can bring only entries that arrived meanwhile by another path (a push from that
    // peer, or its own exchange with us, crosses ours): the next round's digest has them. Only
    // rounds that keep bringing nothing new mean the peer's answers do not follow our digest.
    let roundsWithNothingNew = 0;
    for (;;) {
      const round = await this.exclusive(() => this.exchangeWith(peer));
      if (round.refused.length) throw new ChorusError('FAILED_PRECONDITION', `${peer.name} holds entries this replica refuses (${round.refused[0]})`);
      if (round.conflicts) throw new ChorusError('FAILED_PRECONDITION', `${peer.name} keeps sending entries that conflict with this replica's log (see the alarms of chorus status)`);
      if (round.received === 0) return total;
      roundsWithNothingNew = round.added === 0 ? roundsWithNothingNew + 1 : 0;
      if (roundsWithNothingNew >= PULL_ROUNDS_WITHOUT_PROGRESS) {
        throw new ChorusError('FAILED_PRECONDITION', `${peer.name} sent only entries this replica already holds in ${roundsWithNothingNew} exchanges in a row; what it holds beyond them is not known here`);
      }
      total += round.added;
    }
  }

  /**
   * Allocation goes to the first healthy member in name order, so one replica's group commit
   * serves the shard and its cached znode version stays current. When that member does not
   * answer, the next one is asked, ending with our own allocator. The same nonce is kept on
   * every attempt: if an unanswered attempt did land, the next one recognises it.
   */
  private randomLivePeer(): Peer | undefined {
    const live = this.peers.filter((p) => this.swim.isAlive(p.name));
    return live[Math.floor(Math.random() * live.length)];
  }

  /** Every member not decommissioned, self included, in name order. */
  private members(): Array<{ name: string; peer: Peer | null }> {
    return [...this.peers.map((p) => ({ name: p.name, peer: p as Peer | null })), { name: this.opts.self, peer: null }]
      .filter((m) => this.swim.members.get(m.name)?.state !== 'decommissioned')
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  private usable(peer: Peer): boolean {
    return this.swim.isAlive(peer.name) && peer.healthy;
  }

  /** The member that allocates for the shard as seen from here: the first live one by name. */
  allocatingMember(): string {
    return this.members().find((m) => !m.peer || this.usable(m.peer))!.name;
  }

  /**
   * Fails with ZooKeeperAwayError only when no attempt may have allocated anything: every member
   * asked said ZooKeeper was away. A member whose reply was lost may have allocated; then the
   * error is a plain ALLOCATOR_UNAVAILABLE, and the request must not be allocated otherwise.
   */
  async allocate(request: AllocationRequest): Promise<Allocation[]> {
    let uncertain = false;
    for (const member of this.members()) {
      if (!member.peer) {
        // Asked even when the members before said ZooKeeper is away: it may be away for them
        // only (one cut from it), and this replica's allocator waits no longer than leaseAfterMs.
        try {
          return await this.allocator.allocate(request);
        } catch (err) {
          if (err instanceof ZooKeeperAwayError && uncertain) throw new ChorusError('ALLOCATOR_UNAVAILABLE', `no member could allocate, and one did not answer whether it had: ${err.message}`);
          throw err;
        }
      }
      if (!this.usable(member.peer)) continue;
      try {
        return await member.peer.allocate(request, this.opts.allocateTimeoutMs);
      } catch (err) {
        // ZooKeeper away is said once by the lease keeper, not at every insert of the outage.
        if (!(err instanceof ZooKeeperAwayError)) uncertain = true;
        this.logger[err instanceof ZooKeeperAwayError ? 'debug' : 'warn']({ peer: member.name, err: (err as Error).message }, 'allocation via peer failed; trying the next member');
      }
    }
    throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'no member could allocate');
  }
}

/**
 * Splits entries into messages of at most `maxEntries` entries and about `maxBytes` (their JSON,
 * larger than their protobuf form); an entry larger than `maxBytes` goes alone, never dropped.
 */
export function messagesOf(entries: LogEntry[], maxEntries: number, maxBytes: number): LogEntry[][] {
  const out: LogEntry[][] = [];
  let current: LogEntry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const size = JSON.stringify(e).length;
    if (current.length > 0 && (current.length >= maxEntries || bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(e);
    bytes += size;
  }
  if (current.length) out.push(current);
  return out;
}

/** The parts of `batch`'s entries found in `parts`, in entry order, until `maxBytes` is reached; those beyond are fetched. */
export function partsOf(batch: LogEntry[], parts: ReadonlyMap<number, Buffer>, maxBytes: number): PushedPart[] {
  const out: PushedPart[] = [];
  let bytes = 0;
  for (const entry of batch) {
    const data = parts.get(entry.lsn);
    if (!data || bytes + data.length > maxBytes) continue;
    out.push({ lsn: entry.lsn, data });
    bytes += data.length;
  }
  return out;
}

export function toGrpcError(err: unknown): grpc.ServiceError {
  const e = ChorusError.from(err);
  const status =
    e.code === 'UNAUTHENTICATED'
      ? grpc.status.UNAUTHENTICATED
      : e.code === 'PERMISSION_DENIED'
        ? grpc.status.PERMISSION_DENIED
        : e.code === 'FAILED_PRECONDITION'
        ? grpc.status.FAILED_PRECONDITION
        : e.httpStatus === 503
      ? grpc.status.UNAVAILABLE
      : e.httpStatus === 404
        ? grpc.status.NOT_FOUND
        : e.httpStatus === 400
          ? grpc.status.INVALID_ARGUMENT
          : grpc.status.INTERNAL;
  const metadata = new grpc.Metadata();
  metadata.set('chorus-error-code', e.qualifiedCode);
  return Object.assign(new Error(`${e.qualifiedCode}: ${e.message}`), { code: status, details: `${e.qualifiedCode}: ${e.message}`, metadata }) as grpc.ServiceError;
}
