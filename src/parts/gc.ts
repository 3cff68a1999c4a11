import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../core/logger.js';
import type { LocalLog } from '../log/store.js';
import type { PartStore } from './store.js';

export interface GcOptions {
  /** A copy is kept at least this long, even once everyone has applied it. */
  minRetentionMs: number;
  /** A copy is deleted after this long even if a member has not applied it (that member then clones). */
  maxRetentionMs: number;
}

/**
 * Deletes part copies nobody needs any more: once every member (decommissioned ones excepted)
 * has applied the LSN and the minimum retention has passed, or once the maximum retention has
 * passed regardless. Deleting a copy frees nothing while ClickHouse still holds the part
 * (hardlinks), and everything once it has merged the part away.
 */
export class PartStoreGc {
  private timer: NodeJS.Timeout | null = null;
  bytesHeld = 0;
  partsHeld = 0;

  constructor(
    private readonly store: PartStore,
    private readonly log: LocalLog,
    /** The lowest applied watermark among the members that count, this replica's included. */
    private readonly appliedEverywhere: () => number,
    private readonly opts: GcOptions,
    private readonly logger: Logger,
  ) {}

  start(periodMs: number): void {
    this.timer = setInterval(() => void this.sweep().catch((err: unknown) => this.logger.warn({ err }, 'part-store GC failed')), periodMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One pass over the store; returns the number of copies deleted. */
  async sweep(now = Date.now()): Promise<number> {
    const everywhere = this.appliedEverywhere();
    let deleted = 0;
    let bytes = 0;
    let parts = 0;
    for (const name of readdirSync(this.store.partsDir)) {
      const lsn = Number(name);
      if (!Number.isSafeInteger(lsn)) continue;
      const dir = join(this.store.partsDir, name);
      const found = this.log.get(lsn);
      if (!found) {
        // A copy with no entry yet (being recorded, or an interrupted insert's leftover that
        // recovery did not claim) is only removed after the maximum retention.
        if (now - statSync(dir).mtimeMs >= this.opts.maxRetentionMs) {
          await this.store.remove(lsn);
          deleted++;
        }
        continue;
      }
      const age = now - found.entry.allocatedAtMs;
      // Never before this replica has it attached: the copy is what ATTACH links from.
      const appliedHere = found.state === 'applied' || found.state === 'voided';
      const everyoneHasIt = lsn <= everywhere && age >= this.opts.minRetentionMs;
      if (appliedHere && (everyoneHasIt || age >= this.opts.maxRetentionMs)) {
        await this.store.remove(lsn);
        deleted++;
        continue;
      }
      parts++;
      // Sizes come from the entry: a stat of every file of every held part, every few seconds,
      // blocked the event loop for tens of milliseconds on a slow disk.
      bytes += found.entry.bytes;
    }
    this.bytesHeld = bytes;
    this.partsHeld = parts;
    if (deleted) this.logger.debug({ deleted, bytesHeld: bytes }, 'part-store GC');
    return deleted;
  }
}
