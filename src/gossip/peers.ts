import * as grpc from '@grpc/grpc-js';
import type { PeerConfig } from '../config/config.js';
import { ChorusError } from '../core/errors.js';
import type { Allocation, AllocationRequest } from '../allocator/window.js';
import { ZooKeeperAwayError } from '../allocator/allocator.js';
import type { Digest, LogEntry } from '../log/entry.js';
import type { MemberUpdate } from './members.js';
import { chorusV1 } from './proto.js';
import type { InterserverClient } from '../tls/https.js';
import type { PeerTransport } from '../tls/transport.js';

interface GossipClient extends grpc.Client {
  push(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<{ added: number }>): void;
  exchange(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<{ digest: Digest; entries: LogEntry[] }>): void;
  allocate(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<{ allocations: Allocation[] }>): void;
  ping(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<PingReply>): void;
  pingReq(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<PingReply>): void;
  waitApplied(req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<{ applied: Array<number | string> }>): grpc.ClientUnaryCall;
}

/** A small part travelling with its entry: its files concatenated in manifest order. */
export interface PushedPart {
  lsn: number;
  data: Buffer;
}

export interface PingReply {
  from: string;
  ok: boolean;
  updates: MemberUpdate[];
}

/**
 * A peer as this replica sees it: its gRPC client and whether calls to it have been failing.
 * Health here is only a hint for choosing whom to ask; correctness never depends on it.
 */
export class Peer {
  readonly client: GossipClient;
  /** Its interserver port, where part files are fetched. */
  readonly interserver: InterserverClient;
  private failingSince: number | null = null;

  constructor(
    readonly config: PeerConfig,
    transport: PeerTransport,
  ) {
    const Gossip = chorusV1('chorus/v1/gossip.proto').Gossip!;
    this.interserver = transport.interserverClient(config);
    this.client = new Gossip(config.grpc, transport.grpcChannelCredentials(config.name), {
      ...transport.grpcChannelOptions(config.name),
      'grpc.keepalive_time_ms': 10_000,
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2000,
    }) as unknown as GossipClient;
  }

  get name(): string {
    return this.config.name;
  }

  get healthy(): boolean {
    return this.failingSince === null;
  }

  /** A call we cancelled ourselves (`signal`) says nothing about the peer's health. */
  private track<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
    return promise.then(
      (value) => {
        this.failingSince = null;
        return value;
      },
      (err: unknown) => {
        if (!signal?.aborted) this.failingSince ??= Date.now();
        throw err;
      },
    );
  }

  private call<T>(method: 'push' | 'exchange' | 'allocate' | 'ping' | 'pingReq' | 'waitApplied', req: unknown, timeoutMs: number, signal?: AbortSignal): Promise<T> {
    return this.track(
      new Promise<T>((resolve, reject) => {
        const call = (this.client[method] as (req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<unknown>) => grpc.ClientUnaryCall | undefined)(
          req,
          { deadline: Date.now() + timeoutMs },
          (err: grpc.ServiceError | null, reply?: unknown) => {
            signal?.removeEventListener('abort', cancel);
            if (err) reject(new ChorusError('PEER_UNAVAILABLE', `peer ${this.name} ${method}: ${err.details || err.message}`, err));
            else resolve(reply as T);
          },
        );
        const cancel = () => call?.cancel();
        signal?.addEventListener('abort', cancel, { once: true });
      }),
      signal,
    );
  }

  push(from: string, entries: LogEntry[], timeoutMs: number, parts: PushedPart[] = []): Promise<{ added: number }> {
    return this.call('push', { from, entries, parts }, timeoutMs);
  }

  exchange(digest: Digest, timeoutMs: number): Promise<{ digest: Digest; entries: LogEntry[] }> {
    return this.call('exchange', digest, timeoutMs);
  }

  allocate(request: AllocationRequest, timeoutMs: number): Promise<Allocation[]> {
    const wire = { from: request.origin, nonce: request.nonce, blockIds: request.blockIds.map((b) => b ?? ''), tables: request.tables ?? [], reserve: request.reserve ?? 0 };
    return this.call<{ allocations: Allocation[]; zookeeperAway?: string }>('allocate', wire, timeoutMs).then((r) => {
      if (r.zookeeperAway) throw new ZooKeeperAwayError(`${this.name}: ${r.zookeeperAway}`);
      return r.allocations.map((a) => ({ lsn: Number(a.lsn), duplicate: a.duplicate, barrier: Number(a.barrier ?? 0) }));
    });
  }

  ping(from: string, updates: MemberUpdate[], timeoutMs: number): Promise<PingReply> {
    return this.call('ping', { from, updates }, timeoutMs);
  }

  pingReq(from: string, target: string, updates: MemberUpdate[], timeoutMs: number): Promise<PingReply> {
    return this.call('pingReq', { from, target, updates }, timeoutMs);
  }

  /** Which of `lsns` the peer has applied, once all are or after `timeoutMs` (insert_quorum). */
  waitApplied(from: string, lsns: number[], timeoutMs: number, signal: AbortSignal): Promise<number[]> {
    // The peer answers at its own deadline; ours leaves room for the answer to travel.
    return this.call<{ applied: Array<number | string> }>('waitApplied', { from, lsns, timeoutMs }, timeoutMs + 5000, signal).then((r) => r.applied.map(Number));
  }

  close(): void {
    this.client.close();
    this.interserver.close();
  }
}
