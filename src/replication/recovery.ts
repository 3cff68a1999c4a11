import { existsSync } from 'node:fs';
import type { Allocator } from '../allocator/allocator.js';
import { barrierIn, blockKey, windowEntries } from '../allocator/window.js';
import type { Logger } from '../core/logger.js';
import type { LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { PartStore } from '../parts/store.js';

export interface RecoveryDeps {
  self: string;
  log: LocalLog;
  store: PartStore;
  allocator: Allocator;
  announce: (entries: LogEntry[]) => void;
  /** Nonces of allocations still running in this process. */
  inFlight: Set<string>;
  /** An intent whose nonce is not in the window is given up only after this long: its allocation may still land. */
  intentGraceMs: number;
  logger: Logger;
}

/**
 * Finishes what a crash interrupted between allocating and recording. An intent (recorded
 * before allocating) is looked up in the allocator's window by its nonce: what was allocated
 * to it becomes log entries (the part copies wait under pending/), an LSN whose copy is gone is
 * voided, and an intent nothing was allocated to is dropped. Only this replica, the origin,
 * voids its LSNs.
 */
export class Recovery {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** Voided here, not yet taken out of the allocator's window (ZooKeeper was unavailable). */
  private unreleased = new Set<number>();

  constructor(private readonly deps: RecoveryDeps) {}

  /** At start-up: what the window says about our intents and voids. */
  async recover(): Promise<void> {
    const window = windowEntries(await this.deps.allocator.read());
    const voided = new Set(this.deps.log.ownVoids(this.deps.self));
    for (const { lsn, origin } of window) if (origin === this.deps.self && voided.has(lsn)) this.unreleased.add(lsn);
    await this.resolveIntents();
  }

  start(periodMs: number): void {
    this.timer = setInterval(() => void this.tick(), periodMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private async tick(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      await this.resolveIntents();
      if (this.unreleased.size) await this.release([...this.unreleased]);
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'recovery round failed; will retry');
    } finally {
      this.running = false;
    }
  }

  async resolveIntents(): Promise<void> {
    const { log, store } = this.deps;
    const intents = log.intents().filter((i) => !this.deps.inFlight.has(i.nonce));
    if (intents.length === 0) return;
    const window = windowEntries(await this.deps.allocator.read());
    for (const intent of intents) {
      const barrierOf = (d: { entry: { kind: string; database: string; table: string } }, lsn: number) =>
        d.entry.kind === 'insert' ? barrierIn(window, `${d.entry.database}.${d.entry.table}`, lsn) : 0;
      const own = new Map(window.filter((e) => e.nonce === intent.nonce).map((e) => [e.key, e.lsn]));
      if (own.size === 0) {
        if (Date.now() - intent.createdAt < this.deps.intentGraceMs) continue;
        log.dropIntent(intent.nonce);
        await store.discardPending(intent.nonce);
        this.deps.logger.info({ nonce: intent.nonce }, 'recovery: nothing was allocated to an interrupted insert; dropped');
        continue;
      }
      const entries: LogEntry[] = [];
      const lost: number[] = [];
      for (const draft of intent.drafts) {
        const lsn = own.get(blockKey(draft.entry.blockId));
        if (lsn === undefined) continue;
        // Already recorded: by this replica before the crash, or, if it is not the same entry, by
        // someone else (an alarm, recorded by checkOwn; the LSN is then neither recorded nor voided).
        if (log.get(lsn)) {
          log.checkOwn({ ...draft.entry, lsn, allocatedAtMs: 0, barrier: 0 });
          continue;
        }
        if (draft.entry.kind !== 'insert') {
          entries.push({ ...draft.entry, lsn, allocatedAtMs: Date.now(), barrier: 0 });
          continue;
        }
        if (existsSync(draft.dir)) await store.commit(draft.dir, lsn);
        if (await store.has(lsn)) entries.push({ ...draft.entry, lsn, allocatedAtMs: Date.now(), barrier: barrierOf(draft, lsn) });
        else lost.push(lsn);
      }
      const { added } = log.resolveIntent(intent.nonce, entries);
      await store.discardPending(intent.nonce);
      if (added.length) {
        this.deps.announce(added);
        this.deps.logger.info({ lsns: added.map((e) => e.lsn) }, 'recovery: recorded entries allocated before a crash');
      }
      if (lost.length) await this.voidLsns(lost);
    }
  }

  /**
   * Voids LSNs that have no entry here, here, in the window and at the peers. Only their origin
   * (the default) or the member decommissioning that origin may call it.
   */
  async voidLsns(lsns: number[], origin = this.deps.self): Promise<number[]> {
    const voided = this.deps.log.voidUnrecorded(lsns, origin);
    if (voided.length === 0) return [];
    this.deps.logger.warn({ lsns: voided.map((e) => e.lsn), origin }, 'voided LSNs that were allocated but never recorded');
    this.deps.announce(voided);
    for (const e of voided) this.unreleased.add(e.lsn);
    await this.release(voided.map((e) => e.lsn));
    return voided.map((e) => e.lsn);
  }

  private async release(lsns: number[]): Promise<void> {
    await this.deps.allocator.release(lsns);
    for (const lsn of lsns) this.unreleased.delete(lsn);
  }
}
