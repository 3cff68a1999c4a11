import { ChorusError } from '../core/errors.js';

/**
 * Fault hooks for tests. They do nothing unless the sidecar runs with `testFaults: true`
 * (CHORUS_TEST_FAULTS=1), and only tests arm them, through POST /_chorus/faults.
 */
/**
 * The named points where a sidecar can die in the middle of its work. Each one is recovered
 * at start-up; a test arms one, the sidecar kills itself there (SIGKILL, as `kill -9` would),
 * and the test checks that nothing was lost or written twice.
 */
export const CRASH_POINTS = [
  /** LSNs allocated, nothing recorded in the local log yet. */
  'insert.after-allocate',
  /** Entries recorded, the part not attached yet. */
  'insert.after-record',
  /** ATTACH PART done, the local block -> LSN mapping not written yet (origin and followers). */
  'attach.after-attach',
  /** Part of a part's files fetched from a peer, the rest not. */
  'fetch.mid-transfer',
  /** A mutation's ALTER answered by ClickHouse, not yet recorded as submitted in the local log. */
  'mutation.after-submit',
] as const;

export type CrashPoint = (typeof CRASH_POINTS)[number];

export interface FaultSettings {
  /** Flip one byte in each of the next N parts this replica serves to a peer. */
  corruptServedFiles: number;
  /** Die at this point the next time it is reached. */
  crashAt: CrashPoint | null;
  /** The next N reads of an attached part's checksums.txt (to recognise it) fail with EIO. */
  unreadableParts: number;
  /**
   * The next N parts attached here are left with an empty columns.txt, as 18.16's ATTACH PART
   * (which rewrites the file) leaves them when the disk fills.
   */
  emptyAttachedColumns: number;
  /**
   * Log entries neither leave nor reach this replica by gossip (pushes and exchanges refused
   * and not sent); membership probes and allocation still travel. Entries recorded meanwhile
   * reach the peers by exchange once it is lifted.
   */
  isolateGossip: boolean;
  /**
   * Entries are applied here as they come, without the order that barriers give a table's
   * inserts, drops and mutations: what tests switch on to show that order is what keeps the
   * replicas identical.
   */
  ignoreOrdering: boolean;
}

export class Faults {
  private settings: FaultSettings = { corruptServedFiles: 0, crashAt: null, unreadableParts: 0, emptyAttachedColumns: 0, isolateGossip: false, ignoreOrdering: false };

  constructor(readonly enabled: boolean) {}

  arm(update: Partial<FaultSettings>): FaultSettings {
    if (!this.enabled) return this.settings;
    if (update.corruptServedFiles !== undefined) this.settings.corruptServedFiles = Math.max(0, Math.floor(update.corruptServedFiles));
    if (update.unreadableParts !== undefined) this.settings.unreadableParts = Math.max(0, Math.floor(update.unreadableParts));
    if (update.emptyAttachedColumns !== undefined) this.settings.emptyAttachedColumns = Math.max(0, Math.floor(update.emptyAttachedColumns));
    if (update.isolateGossip !== undefined) this.settings.isolateGossip = update.isolateGossip === true;
    if (update.ignoreOrdering !== undefined) this.settings.ignoreOrdering = update.ignoreOrdering === true;
    if (update.crashAt !== undefined) {
      if (update.crashAt !== null && !CRASH_POINTS.includes(update.crashAt)) {
        throw new ChorusError('BAD_QUERY', `unknown crash point ${String(update.crashAt)}; known: ${CRASH_POINTS.join(', ')}`);
      }
      this.settings.crashAt = update.crashAt;
    }
    return { ...this.settings };
  }

  /** Dies here if a test armed this point. */
  crashPoint(point: CrashPoint): void {
    if (!this.enabled || this.settings.crashAt !== point) return;
    process.stderr.write(`test fault: dying at crash point ${point}\n`);
    process.kill(process.pid, 'SIGKILL');
  }

  get gossipIsolated(): boolean {
    return this.enabled && this.settings.isolateGossip;
  }

  get orderingIgnored(): boolean {
    return this.enabled && this.settings.ignoreOrdering;
  }

  /** True when this read of an attached part should fail; consumes one. */
  takeUnreadablePart(): boolean {
    if (!this.enabled || this.settings.unreadableParts <= 0) return false;
    this.settings.unreadableParts--;
    return true;
  }

  /** True when the part just attached should lose its columns.txt's content; consumes one. */
  takeEmptyAttachedColumns(): boolean {
    if (!this.enabled || this.settings.emptyAttachedColumns <= 0) return false;
    this.settings.emptyAttachedColumns--;
    return true;
  }

  /** True when the file about to be served should be corrupted; consumes one. */
  takeCorruptServedFile(): boolean {
    if (!this.enabled || this.settings.corruptServedFiles <= 0) return false;
    this.settings.corruptServedFiles--;
    return true;
  }
}
