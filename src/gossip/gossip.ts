import * as grpc from '@grpc/grpc-js';
import type { Allocator } from '../allocator/allocator.js';
import type { Allocation, AllocationRequest } from '../allocator/window.js';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';
import { ENTRY_KINDS, type Digest, type LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Peer } from './peers.js';
import { chorusV1 } from './proto.js';
import { Swim, type SwimOptions } from './swim.js';

export interface GossipOptions {
  self: string;
  intervalMs: number;
  rpcTimeoutMs: number;
  allocateTimeoutMs: number;
  /** At most this many entries in one reply or push. */
  maxEntriesPerMessage: number;
  swim: SwimOptions;
  /**
   * The replica name the caller's TLS client certificate proves, or null when the transport is
   * not authenticated (`tls.insecure`). Whatever a message says about its sender is checked
   * against it.
   */
  identify?: (call: grpc.ServerUnaryCall<unknown, unknown>) => string | null;
}

/**
 * Log dissemination between the sidecars of a shard: push on append, periodic digest
 * exchange with a random peer to pull (and push back) what either side lacks, and the
 * forwarding of allocation requests to the shard's allocating replica.
 */
export class Gossip {
  private timer: NodeJS.Timeout | null = null;
  private exchanging = false;
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
  }

  /** The gRPC handlers of the Gossip service, to be added to the replica's server. */
  register(server: grpc.Server): void {
    const Gossip = chorusV1('chorus/v1/gossip.proto').Gossip!;
    server.addService(Gossip.service, {
      ...this.swim.handlers(),
      push: (call: grpc.ServerUnaryCall<{ from: string; entries: LogEntry[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        try {
          const added = this.receive(call.request.entries);
          cb(null, { added: added.length });
        } catch (err) {
          cb(toGrpcError(err));
        }
      },
      exchange: (call: grpc.ServerUnaryCall<Digest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        try {
          const theirs = call.request;
          this.log.setPeerProgress(theirs.from, theirs.appliedWatermark, theirs.maxLsn);
          cb(null, { digest: this.log.digest(this.opts.self), entries: this.log.missingFrom(theirs, this.opts.maxEntriesPerMessage) });
        } catch (err) {
          cb(toGrpcError(err));
        }
      },
      allocate: (call: grpc.ServerUnaryCall<{ from: string; nonce: string; blockIds: string[]; tables: string[] }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        const { from, nonce, blockIds, tables } = call.request;
        this.allocator
          .allocate({ origin: from, nonce, blockIds: blockIds.map((b) => b || null), tables: tables.length ? tables : undefined })
          .then((allocations) => cb(null, { allocations }))
          .catch((err: unknown) => cb(toGrpcError(err)));
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

  private receive(entries: LogEntry[]): LogEntry[] {
    const added = this.log.addEntries(entries.map(normaliseEntry));
    if (added.length) this.onNewEntries(added);
    return added;
  }

  /**
   * Sends new entries to every peer at once; a peer that misses them pulls them later.
   * Entries announced while a push to a peer is in flight go together in the next one.
   */
  broadcast(entries: LogEntry[]): void {
    for (const peer of this.peers) {
      const queue = this.outbox.get(peer.name);
      if (queue) queue.push(...entries);
      else this.outbox.set(peer.name, [...entries]);
      if (!this.pushing.has(peer.name)) void this.flush(peer);
    }
  }

  private outbox = new Map<string, LogEntry[]>();
  private pushing = new Set<string>();

  private async flush(peer: Peer): Promise<void> {
    this.pushing.add(peer.name);
    try {
      for (;;) {
        const entries = this.outbox.get(peer.name) ?? [];
        this.outbox.delete(peer.name);
        if (entries.length === 0) return;
        for (let i = 0; i < entries.length; i += this.opts.maxEntriesPerMessage) {
          try {
            await peer.push(this.opts.self, entries.slice(i, i + this.opts.maxEntriesPerMessage), this.opts.rpcTimeoutMs);
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
    if (!peer || this.exchanging) return;
    this.exchanging = true;
    try {
      const reply = await peer.exchange(this.log.digest(this.opts.self), this.opts.rpcTimeoutMs);
      this.receive(reply.entries);
      this.log.setPeerProgress(peer.name, reply.digest.appliedWatermark, reply.digest.maxLsn);
      const theyLack = this.log.missingFrom(reply.digest, this.opts.maxEntriesPerMessage);
      if (theyLack.length) await peer.push(this.opts.self, theyLack, this.opts.rpcTimeoutMs);
      this.metrics.gossipRounds.inc({ kind: 'exchange', outcome: 'ok' });
    } catch (err) {
      this.metrics.gossipRounds.inc({ kind: 'exchange', outcome: 'error' });
      this.logger.debug({ peer: peer.name, err: (err as Error).message }, 'digest exchange failed');
    } finally {
      this.exchanging = false;
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

  async allocate(request: AllocationRequest): Promise<Allocation[]> {
    for (const member of this.members()) {
      if (!member.peer) return this.allocator.allocate(request);
      if (!this.usable(member.peer)) continue;
      try {
        return await member.peer.allocate(request, this.opts.allocateTimeoutMs);
      } catch (err) {
        this.logger.warn({ peer: member.name, err: (err as Error).message }, 'allocation via peer failed; trying the next member');
      }
    }
    throw new ChorusError('ALLOCATOR_UNAVAILABLE', 'no member could allocate');
  }
}

function normaliseEntry(e: LogEntry): LogEntry {
  return {
    lsn: Number(e.lsn),
    kind: ENTRY_KINDS.includes(e.kind) ? e.kind : 'void',
    database: e.database,
    table: e.table,
    partitionId: e.partitionId,
    blockId: e.blockId,
    partName: e.partName,
    checksumsSha256: e.checksumsSha256,
    rows: Number(e.rows),
    bytes: Number(e.bytes),
    files: e.files.map((f) => ({ name: f.name, size: Number(f.size), sha256: f.sha256 })),
    origin: e.origin,
    allocatedAtMs: Number(e.allocatedAtMs),
    barrier: Number(e.barrier ?? 0),
    partition: e.partition ?? '',
  };
}

export function toGrpcError(err: unknown): grpc.ServiceError {
  const e = ChorusError.from(err);
  const status =
    e.code === 'UNAUTHENTICATED'
      ? grpc.status.UNAUTHENTICATED
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
