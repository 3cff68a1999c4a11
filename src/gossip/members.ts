/**
 * SWIM membership state: what this replica believes about each member of the shard, and the
 * rule that merges what others say. Pure, so the rules are tested on their own.
 *
 * alive -> suspect (no answer to a direct nor an indirect probe) -> dead (suspicion not
 * refuted in time). A member that hears it is suspected or dead refutes it by raising its
 * incarnation and announcing itself alive. Decommissioned is final.
 */
export type MemberState = 'alive' | 'suspect' | 'dead' | 'decommissioned';

export interface MemberUpdate {
  name: string;
  state: MemberState;
  incarnation: number;
}

export interface Member extends MemberUpdate {
  /** When this replica last changed its view of the member (for suspicion timeouts). */
  since: number;
}

const RANK: Record<MemberState, number> = { alive: 0, suspect: 1, dead: 2, decommissioned: 3 };

/**
 * States a SWIM message may carry. Decommissioned is not one of them: it is decided through the
 * Admin API and travels as a log entry, so a rumour (or a forged message) cannot remove a member.
 */
const WIRE_STATES: ReadonlySet<string> = new Set<MemberState>(['alive', 'suspect', 'dead']);

/**
 * Whether `update` replaces `current`: a decommission always; otherwise a higher incarnation,
 * or the same incarnation with a graver state (alive < suspect < dead).
 */
export function supersedes(update: MemberUpdate, current: MemberUpdate | undefined): boolean {
  if (!current) return true;
  if (current.state === 'decommissioned') return false;
  if (update.state === 'decommissioned') return true;
  if (update.incarnation !== current.incarnation) return update.incarnation > current.incarnation;
  return RANK[update.state] > RANK[current.state];
}

export class MemberTable {
  private members = new Map<string, Member>();
  /** Updates to piggyback on outgoing messages, each sent a bounded number of times. */
  private outbox = new Map<string, { update: MemberUpdate; sends: number }>();
  private incarnation = 0;

  constructor(
    readonly self: string,
    peers: string[],
    private readonly now: () => number = Date.now,
    private readonly maxSends = 6,
  ) {
    this.members.set(self, { name: self, state: 'alive', incarnation: 0, since: now() });
    for (const p of peers) if (p !== self) this.members.set(p, { name: p, state: 'alive', incarnation: 0, since: now() });
  }

  get(name: string): Member | undefined {
    return this.members.get(name);
  }

  list(): Member[] {
    return [...this.members.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /** Applies an update heard from anywhere; returns true when it changed the view. */
  apply(update: MemberUpdate): boolean {
    if (!WIRE_STATES.has(update.state) || !Number.isSafeInteger(update.incarnation) || update.incarnation < 0) return false;
    if (update.name === this.self) return this.aboutSelf(update);
    const current = this.members.get(update.name);
    if (!current || !supersedes(update, current)) return false;
    this.members.set(update.name, { ...update, since: this.now() });
    this.enqueue(update);
    return true;
  }

  /** Someone says we are suspect or dead: refute with a higher incarnation. */
  private aboutSelf(update: MemberUpdate): boolean {
    const me = this.members.get(this.self)!;
    if (me.state === 'decommissioned') return false;
    if (update.state === 'alive' || update.incarnation < this.incarnation) return false;
    this.incarnation = update.incarnation + 1;
    const refutation: MemberUpdate = { name: this.self, state: 'alive', incarnation: this.incarnation };
    this.members.set(this.self, { ...refutation, since: this.now() });
    this.enqueue(refutation);
    return true;
  }

  /** A probe failed directly and indirectly. */
  suspect(name: string): boolean {
    const m = this.members.get(name);
    if (!m || m.state !== 'alive') return false;
    return this.apply({ name, state: 'suspect', incarnation: m.incarnation });
  }

  /** A member answered: alive at the incarnation we know (a higher one comes with its updates). */
  heardFrom(name: string): void {
    const m = this.members.get(name);
    if (m && (m.state === 'suspect' || m.state === 'dead')) {
      // Only the member itself can refute; but hearing it directly is proof enough that the
      // suspicion is stale, so we take it as alive at the next incarnation it will announce.
      this.members.set(name, { name, state: 'alive', incarnation: m.incarnation + 1, since: this.now() });
      this.enqueue({ name, state: 'alive', incarnation: m.incarnation + 1 });
    }
  }

  /** Suspects whose suspicion outlived `timeoutMs` are declared dead. */
  expireSuspicions(timeoutMs: number): string[] {
    const dead: string[] = [];
    for (const m of this.members.values()) {
      if (m.state === 'suspect' && this.now() - m.since >= timeoutMs) {
        this.apply({ name: m.name, state: 'dead', incarnation: m.incarnation });
        dead.push(m.name);
      }
    }
    return dead;
  }

  /**
   * A decommission entry of the log names `name` (or the meta that records one): final, and
   * never announced by SWIM, since receivers ignore that state from the wire.
   */
  decommission(name: string): boolean {
    const m = this.members.get(name);
    if (!m || m.state === 'decommissioned') return false;
    this.members.set(name, { name, state: 'decommissioned', incarnation: m.incarnation, since: this.now() });
    this.outbox.delete(name);
    return true;
  }

  private enqueue(update: MemberUpdate): void {
    this.outbox.set(update.name, { update, sends: 0 });
  }

  /** Updates to piggyback on the next message; each goes out at most `maxSends` times. */
  takeUpdates(): MemberUpdate[] {
    const out: MemberUpdate[] = [];
    for (const [name, item] of this.outbox) {
      out.push(item.update);
      if (++item.sends >= this.maxSends) this.outbox.delete(name);
    }
    // Our own state rides along always: it is how a restarted member is seen alive again.
    const me = this.members.get(this.self)!;
    if (!out.some((u) => u.name === this.self)) out.push({ name: me.name, state: me.state, incarnation: me.incarnation });
    return out;
  }

  /** Members that count: everyone not decommissioned. */
  active(): Member[] {
    return this.list().filter((m) => m.state !== 'decommissioned');
  }
}
