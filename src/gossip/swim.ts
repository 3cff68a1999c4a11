import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../core/logger.js';
import { MemberTable, type MemberState, type MemberUpdate } from './members.js';
import type { Peer, PingReply } from './peers.js';

export interface SwimOptions {
  probeIntervalMs: number;
  probeTimeoutMs: number;
  suspicionTimeoutMs: number;
  indirectProbes: number;
}

/**
 * SWIM failure detection over the gossip gRPC channel: each period one member is probed;
 * if it does not answer, `indirectProbes` others are asked to probe it; if none gets an
 * answer it is suspected, and declared dead when the suspicion is not refuted in time.
 * Membership changes ride on every probe and answer.
 */
export class Swim {
  readonly members: MemberTable;
  private timer: NodeJS.Timeout | null = null;
  private order: Peer[] = [];
  private probing = false;

  constructor(
    private readonly self: string,
    private readonly peers: Peer[],
    private readonly opts: SwimOptions,
    private readonly logger: Logger,
  ) {
    this.members = new MemberTable(self, peers.map((p) => p.name));
  }

  /** Alive (not suspect, dead or decommissioned) in this replica's view. */
  isAlive(name: string): boolean {
    return this.members.get(name)?.state === 'alive';
  }

  /**
   * The Ping and PingReq handlers. `refuse` answers whether the call's claimed sender is not the
   * one its transport proves (then nothing of the message is taken in).
   */
  handlers(refuse: (call: grpc.ServerUnaryCall<unknown, unknown>, claimed: string) => grpc.ServiceError | null): grpc.UntypedServiceImplementation {
    return {
      ping: (call: grpc.ServerUnaryCall<{ from: string; updates: MemberUpdate[] }, PingReply>, cb: grpc.sendUnaryData<PingReply>) => {
        const refused = refuse(call, call.request.from);
        if (refused) return cb(refused);
        this.receive(call.request.from, call.request.updates);
        cb(null, { from: this.self, ok: true, updates: this.members.takeUpdates() });
      },
      pingReq: (call: grpc.ServerUnaryCall<{ from: string; target: string; updates: MemberUpdate[] }, PingReply>, cb: grpc.sendUnaryData<PingReply>) => {
        const refused = refuse(call, call.request.from);
        if (refused) return cb(refused);
        this.receive(call.request.from, call.request.updates);
        const target = this.peers.find((p) => p.name === call.request.target);
        if (!target) return cb(null, { from: this.self, ok: false, updates: this.members.takeUpdates() });
        target
          .ping(this.self, this.members.takeUpdates(), this.opts.probeTimeoutMs)
          .then((reply) => {
            this.receive(target.name, reply.updates);
            cb(null, { from: this.self, ok: true, updates: this.members.takeUpdates() });
          })
          .catch(() => cb(null, { from: this.self, ok: false, updates: this.members.takeUpdates() }));
      },
    };
  }

  private receive(from: string, updates: MemberUpdate[]): void {
    for (const u of updates) {
      const update = { name: u.name, state: u.state as MemberState, incarnation: Number(u.incarnation) };
      const before = this.members.get(update.name)?.state;
      if (this.members.apply(update) && before !== this.members.get(update.name)?.state) this.logChange(update.name);
    }
    const before = this.members.get(from)?.state;
    this.members.heardFrom(from);
    if (before !== this.members.get(from)?.state) this.logChange(from);
  }

  private logChange(name: string): void {
    const m = this.members.get(name)!;
    this.logger.info({ member: name, state: m.state, incarnation: m.incarnation }, `member ${name} is ${m.state}`);
  }

  start(): void {
    this.timer = setInterval(() => void this.round(), this.opts.probeIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One protocol period: probe the next member of a shuffled round-robin, then expire suspicions. */
  async round(): Promise<void> {
    if (this.probing) return;
    this.probing = true;
    try {
      for (const name of this.members.expireSuspicions(this.opts.suspicionTimeoutMs)) this.logChange(name);
      if (this.order.length === 0) this.order = this.peers.filter((p) => this.members.get(p.name)?.state !== 'decommissioned').sort(() => Math.random() - 0.5);
      const target = this.order.shift();
      if (!target) return;
      if (await this.probe(target)) return;
      if (this.members.suspect(target.name)) this.logChange(target.name);
    } finally {
      this.probing = false;
    }
  }

  private async probe(target: Peer): Promise<boolean> {
    try {
      const reply = await target.ping(this.self, this.members.takeUpdates(), this.opts.probeTimeoutMs);
      this.receive(target.name, reply.updates);
      return true;
    } catch {
      // No direct answer: ask others, who may reach it by another path.
    }
    const helpers = this.peers
      .filter((p) => p !== target && this.isAlive(p.name))
      .sort(() => Math.random() - 0.5)
      .slice(0, this.opts.indirectProbes);
    const answers = await Promise.all(
      helpers.map((h) =>
        h.pingReq(this.self, target.name, this.members.takeUpdates(), this.opts.probeTimeoutMs * 2).then(
          (reply) => {
            this.receive(h.name, reply.updates);
            return reply.ok;
          },
          () => false,
        ),
      ),
    );
    return answers.some(Boolean);
  }
}
