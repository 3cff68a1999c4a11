import type { Attacher } from '../clickhouse/attach.js';
import { Semaphore, sleep } from '../core/async.js';
import { ChorusError, type ErrorCode } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import { fetchPart, storePushedPart } from '../parts/fetch.js';
import type { PartStore } from '../parts/store.js';
import type { Peer } from '../gossip/peers.js';
import type { Faults } from '../faults/faults.js';

const MAX_RETRY_DELAY_MS = 10_000;

/** Whether `err` or an error it wraps carries `code`: an attach that failed because ClickHouse is away says ATTACH_FAILED. */
function causedBy(err: unknown, code: ErrorCode): boolean {
  for (let e = err; e !== undefined && e !== null; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ChorusError && e.code === code) return true;
  }
  return false;
}

export interface ApplierOptions {
  self: string;
  fetchConcurrency: number;
  retryDelayMs: number;
  fetchTimeoutMs: number;
  /** Bytes of pushed parts being stored at once at most; beyond it a pushed part is fetched instead. */
  maxPushedBytesStoring: number;
  /** Whether the local ClickHouse answers: asked while entries wait for it, to retry them as soon as it is back. */
  clickhouseAnswers: () => Promise<boolean>;
}

/**
 * Makes this replica hold every entry of the log: for each unapplied entry, get the part into
 * the part store (fetching it from a peer, verified) and attach it. Inserts commute, so entries
 * are applied concurrently; a failing entry is retried with backoff and never blocks the rest.
 */
export class Applier {
  private inFlight = new Set<number>();
  private retryAt = new Map<number, number>();
  private attempts = new Map<number, number>();
  /** Entries whose last try found ClickHouse unreachable: retried together once it answers, whatever their backoff. */
  private awaitingClickHouse = new Set<number>();
  private clickhouseProbe: Promise<void> | null = null;
  private nextProbeAt = 0;
  /** Bytes of pushed parts held in memory until stored (bounded by maxPushedBytesStoring). */
  private pushedBytesStoring = 0;
  private wake: (() => void) | null = null;
  private stopped = false;
  /** Set by the admin Pause call: nothing new is applied; gossip and inserts go on. */
  paused = false;
  private loop: Promise<void> | null = null;
  private readonly slots: Semaphore;

  constructor(
    private readonly opts: ApplierOptions,
    private readonly log: LocalLog,
    private readonly store: PartStore,
    private readonly attacher: Attacher,
    private readonly peers: Peer[],
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly faults?: Faults,
  ) {
    this.slots = new Semaphore(opts.fetchConcurrency);
  }

  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.notify();
    await this.loop;
    while (this.inFlight.size > 0) await sleep(20);
  }

  /**
   * Keeps the applier off entries that the insert pipeline is attaching itself; returns the
   * release. Without it the applier could attach the origin's fresh entry a second time.
   */
  hold(lsns: number[]): () => void {
    const held = lsns.filter((lsn) => !this.inFlight.has(lsn));
    for (const lsn of held) this.inFlight.add(lsn);
    return () => {
      for (const lsn of held) this.inFlight.delete(lsn);
      this.notify();
    };
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Forgets backoff for these LSNs and wakes up (resync). */
  retryNow(lsns: number[]): void {
    for (const lsn of lsns) {
      this.retryAt.delete(lsn);
      this.attempts.delete(lsn);
    }
    this.notify();
  }

  notify(): void {
    this.wake?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const now = Date.now();
      const pending = this.paused ? [] : this.log.unappliedLsns(2000);
      this.metrics.lagEntries.set(pending.length);
      const withOps = this.log.tablesWithPendingOps();
      if (this.awaitingClickHouse.size > 0) this.probeClickHouse(now);
      for (const lsn of pending) {
        if (this.inFlight.has(lsn) || (this.retryAt.get(lsn) ?? 0) > now) continue;
        const entry = this.log.get(lsn)?.entry;
        if (!entry) continue;
        // Inserts commute with each other but not with drops of their table: order is only
        // checked where a drop is involved.
        const ordered = entry.kind !== 'insert' || entry.barrier > 0 || withOps.has(`${entry.database}.${entry.table}`) || withOps.has(`${entry.database}.`);
        if (ordered && !this.faults?.orderingIgnored && this.log.blockedBy(entry)) continue;
        this.inFlight.add(lsn);
        const queuedAt = performance.now();
        void this.slots
          .run(() => {
            this.metrics.observeStep('follower', 'slot_wait', queuedAt);
            return this.applyOne(entry);
          })
          .finally(() => {
            this.inFlight.delete(entry.lsn);
            this.notify();
          });
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.opts.retryDelayMs);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = null;
          resolve();
        };
      });
    }
  }

  /** Mutations submitted here and not finished, with why ClickHouse has not finished them (empty: running). */
  private readonly unfinished = new Map<number, string>();

  private countMutations(): void {
    const failing = [...this.unfinished.values()].filter(Boolean).length;
    this.metrics.mutations.set({ state: 'failing' }, failing);
    this.metrics.mutations.set({ state: 'running' }, this.unfinished.size - failing);
  }

  /**
   * A mutation is submitted once (its order against the table's parts is then fixed) and applied
   * once ClickHouse has finished it: until then it is asked again every retry delay, without
   * backoff, and a failure ClickHouse reports is recorded on the entry (ClickHouse retries it).
   */
  private async applyMutation(entry: LogEntry): Promise<boolean> {
    await this.attacher.submitMutation(entry);
    const progress = await this.attacher.mutationProgress(entry);
    if (progress.done) {
      this.unfinished.delete(entry.lsn);
      this.countMutations();
      this.log.setState(entry.lsn, 'applied');
      return true;
    }
    this.unfinished.set(entry.lsn, progress.failure ?? '');
    this.countMutations();
    if (progress.failure) this.log.recordFailure(entry.lsn, `MUTATION_FAILED: ClickHouse has not finished the mutation: ${progress.failure}`);
    this.retryAt.set(entry.lsn, Date.now() + this.opts.retryDelayMs);
    return false;
  }

  private async applyOne(entry: LogEntry): Promise<void> {
    const log = this.logger.child({ lsn: entry.lsn });
    try {
      if (entry.kind === 'mutation') {
        if (await this.applyMutation(entry)) {
          this.retryAt.delete(entry.lsn);
          this.attempts.delete(entry.lsn);
          log.info({ table: `${entry.database}.${entry.table}`, kind: entry.kind }, 'applied');
        }
        return;
      }
      if (entry.kind === 'drop_partition' || entry.kind === 'truncate' || entry.kind === 'schema') {
        if (entry.kind === 'schema') await this.attacher.applySchema(entry);
        else await this.attacher.applyTableOp(entry);
        this.log.setState(entry.lsn, 'applied');
        log.info({ table: `${entry.database}.${entry.table}`, kind: entry.kind }, 'applied');
        return;
      }
      const startedAt = performance.now();
      // From its allocation on the origin (same clock on one host, roughly so across hosts) to here, first try only.
      if (!this.attempts.has(entry.lsn)) this.metrics.recordStep('follower', 'queue_wait', Math.max(0, Date.now() - entry.allocatedAtMs));
      if (!(await this.store.has(entry.lsn))) await this.metrics.timed('follower', 'fetch', () => this.fetch(entry));
      const block = await this.metrics.timed('follower', 'attach', () => this.attacher.attach(entry, 'follower'));
      this.metrics.timed('follower', 'log.applied', () => this.log.markApplied(entry, block));
      this.metrics.observeStep('follower', 'total', startedAt);
      this.retryAt.delete(entry.lsn);
      this.attempts.delete(entry.lsn);
      this.awaitingClickHouse.delete(entry.lsn);
      this.metrics.applyLatency.observe(Math.max(0, Date.now() - entry.allocatedAtMs) / 1000);
      log.debug({ block, table: `${entry.database}.${entry.table}` }, 'applied');
    } catch (err) {
      const e = ChorusError.from(err);
      this.metrics.applyFailures.inc({ kind: entry.kind });
      const attempts = (this.attempts.get(entry.lsn) ?? 0) + 1;
      this.attempts.set(entry.lsn, attempts);
      try {
        this.log.recordFailure(entry.lsn, `${e.qualifiedCode}: ${e.message}`);
      } catch (recordError) {
        // A full disk fails the attach and then this bookkeeping too: the retry below does not need it.
        log.warn({ err: (recordError as Error).message }, 'could not record the failure in the local log');
      }
      const delay = Math.min(MAX_RETRY_DELAY_MS, this.opts.retryDelayMs * 2 ** Math.min(attempts - 1, 5));
      this.retryAt.set(entry.lsn, Date.now() + delay);
      // Only the last failure counts: an entry that found ClickHouse back and failed otherwise keeps its backoff.
      if (causedBy(e, 'CLICKHOUSE_UNAVAILABLE')) this.awaitingClickHouse.add(entry.lsn);
      else this.awaitingClickHouse.delete(entry.lsn);
      log.warn({ err: e.message, code: e.qualifiedCode }, 'apply failed; will retry');
    }
  }

  /**
   * While entries wait for ClickHouse, asks it at most once per retry delay whether it answers,
   * and retries them all at once when it does: a ClickHouse back after a minute would otherwise
   * wait out each entry's backoff, up to MAX_RETRY_DELAY_MS.
   */
  private probeClickHouse(now: number): void {
    if (this.clickhouseProbe || now < this.nextProbeAt) return;
    this.nextProbeAt = now + this.opts.retryDelayMs;
    this.clickhouseProbe = this.opts
      .clickhouseAnswers()
      .then((answers) => {
        if (!answers) return;
        const waiting = [...this.awaitingClickHouse];
        this.awaitingClickHouse.clear();
        this.logger.info({ entries: waiting.length }, 'ClickHouse answers again: retrying the entries that waited for it');
        this.retryNow(waiting);
      })
      .catch(() => undefined)
      .finally(() => (this.clickhouseProbe = null));
  }

  /**
   * Stores parts that came inside a push with their entries (just added to the log), keeping
   * this applier off those entries meanwhile. A part that fails is fetched as usual afterwards.
   */
  async storePushed(parts: Array<{ entry: LogEntry; data: Buffer }>, from: string): Promise<void> {
    // Their bytes are held in memory until stored: past the bound, parts are left to be fetched.
    const taken = parts.filter((p) => {
      if (this.pushedBytesStoring + p.data.length > this.opts.maxPushedBytesStoring) {
        this.metrics.pushedParts.inc({ outcome: 'skipped' });
        return false;
      }
      this.pushedBytesStoring += p.data.length;
      return true;
    });
    const release = this.hold(taken.map((p) => p.entry.lsn));
    try {
      await Promise.all(taken.map(({ entry, data }) => this.storeOnePushed(entry, data, from).finally(() => (this.pushedBytesStoring -= data.length))));
    } finally {
      release();
    }
  }

  private async storeOnePushed(entry: LogEntry, data: Buffer, from: string): Promise<void> {
    try {
      const bytes = await storePushedPart(this.store, entry, data, from, this.faults, (step, ms) => this.metrics.recordStep('follower', step, ms));
      this.metrics.fetchBytes.inc(bytes);
      this.metrics.pushedParts.inc({ outcome: 'stored' });
    } catch (err) {
      const e = ChorusError.from(err);
      const refused = e.code === 'PART_VERIFICATION_FAILED';
      this.metrics.pushedParts.inc({ outcome: refused ? 'refused' : 'failed' });
      if (refused) this.metrics.fetchFailures.inc({ reason: 'verification' });
      this.logger.warn({ lsn: entry.lsn, peer: from, err: e.message }, refused ? 'pushed part refused: its bytes do not match the manifest; it is fetched instead' : 'pushed part not stored; it is fetched instead');
    }
  }

  /** Tries the origin first, then every other peer; a part failing verification is fetched again elsewhere. */
  private async fetch(entry: LogEntry): Promise<void> {
    const origin = this.peers.find((p) => p.name === entry.origin);
    const others = this.peers.filter((p) => p !== origin).sort(() => Math.random() - 0.5);
    const sources = origin ? [origin, ...others] : others;
    let lastError: unknown = new ChorusError('PEER_UNAVAILABLE', `no peer to fetch LSN ${entry.lsn} from`);
    for (const peer of sources) {
      try {
        const started = Date.now();
        const bytes = await fetchPart(this.store, entry, peer.interserver, this.opts.fetchTimeoutMs, this.faults, (step, ms) => this.metrics.recordStep('follower', step, ms));
        this.metrics.fetchBytes.inc(bytes);
        this.logger.debug({ lsn: entry.lsn, peer: peer.name, bytes, ms: Date.now() - started }, 'fetched part');
        return;
      } catch (err) {
        const e = ChorusError.from(err);
        this.metrics.fetchFailures.inc({ reason: e.code === 'PART_VERIFICATION_FAILED' ? 'verification' : e.code === 'PART_NOT_FOUND' ? 'not_found' : 'unavailable' });
        if (e.code === 'PART_VERIFICATION_FAILED') this.logger.warn({ lsn: entry.lsn, peer: peer.name, err: e.message }, 'part refused: bytes do not match the manifest');
        lastError = err;
      }
    }
    throw lastError;
  }
}
