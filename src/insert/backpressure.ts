import type { ClickHouseHttp } from '../clickhouse/http.js';
import { quoteString } from '../clickhouse/http.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../metrics/metrics.js';

export interface BackpressureOptions {
  /** Inserts this replica runs at once; more get 503. 0: no bound. */
  maxConcurrentInserts: number;
  /** The same, per table. 0: no bound. */
  maxConcurrentInsertsPerTable: number;
  /** Age of the oldest entry waiting to be applied here beyond which inserts get 503. 0: off. */
  maxApplyLagSeconds: number;
  /**
   * Active parts in one partition of a table beyond which inserts into that table get 503.
   * Undefined: ClickHouse's parts_to_throw_insert, read from the server. 0: off.
   */
  maxActivePartsPerPartition?: number;
  /** How often the lag and the parts are looked at. */
  checkIntervalMs: number;
}

export interface BackpressureDeps {
  ch: ClickHouseHttp;
  /** The replicated databases: only their tables' parts are counted. */
  databases: string[];
  /** How long the oldest entry still to be applied here has waited (seconds; 0 when none). */
  applyLagSeconds: () => number;
  metrics: Metrics;
  logger: Logger;
}

/** When ClickHouse does not say its parts_to_throw_insert: 18.16's default. */
const FALLBACK_PARTS_TO_THROW = 300;

/** What a client is told to wait before it sends again, by cause: merges and catch-up take seconds. */
const RETRY_AFTER_SECONDS = { concurrency: 1, lag: 5, parts: 5 } as const;

/** A 503 whose Retry-After says how long the cause is expected to last. */
function refusal(code: 'TOO_MANY_INSERTS' | 'REPLICA_LAGGING' | 'TOO_MANY_PARTS', message: string, retryAfterSeconds: number): ChorusError {
  const err = new ChorusError(code, message);
  err.retryAfterSeconds = retryAfterSeconds;
  return err;
}

/**
 * Refuses inserts with 503 and Retry-After, before anything is staged, while this replica could
 * not take them well: too many running at once, its own apply lag too long (it would acknowledge
 * inserts it is far from showing), or a partition with so many active parts that ClickHouse is
 * about to throttle or refuse ("too many parts"). Each condition clears on its own: the lag and
 * the parts are looked at again every checkIntervalMs.
 */
export class Backpressure {
  private running = 0;
  private readonly runningPerTable = new Map<string, number>();
  private lagSeconds = 0;
  /** Tables ("db.t") over the parts threshold, with their most crowded partition. */
  private crowded = new Map<string, { partitionId: string; parts: number }>();
  private timer: NodeJS.Timeout | null = null;
  /** The parts threshold in force: configured, or ClickHouse's own once read. */
  private partsLimit: number | undefined;

  constructor(
    private readonly opts: BackpressureOptions,
    private readonly deps: BackpressureDeps,
  ) {
    this.partsLimit = opts.maxActivePartsPerPartition;
  }

  /**
   * ATTACH PART skips the check ClickHouse makes on a plain INSERT ("too many parts"), so
   * Chorus makes it instead, by default at ClickHouse's own limit.
   */
  private async limitOfParts(): Promise<number> {
    if (this.partsLimit !== undefined) return this.partsLimit;
    try {
      const [row] = await this.deps.ch.rows<{ value: string }>("SELECT value FROM system.merge_tree_settings WHERE name = 'parts_to_throw_insert'");
      const value = Number(row?.value);
      this.partsLimit = Number.isSafeInteger(value) && value > 0 ? value : FALLBACK_PARTS_TO_THROW;
    } catch (err) {
      this.deps.logger.debug({ err }, 'backpressure: could not read parts_to_throw_insert; using 300 for now');
      return FALLBACK_PARTS_TO_THROW;
    }
    return this.partsLimit;
  }

  start(): void {
    const tick = () => {
      void this.check().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, this.opts.checkIntervalMs);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Looks at the lag and the parts now; a failed look keeps what was seen last. */
  async check(): Promise<void> {
    this.lagSeconds = this.deps.applyLagSeconds();
    const limit = await this.limitOfParts();
    if (limit > 0) {
      try {
        const rows = await this.deps.ch.rows<{ database: string; table: string; partitionId: string; parts: number }>(
          `SELECT database, table, partition_id AS partitionId, count() AS parts FROM system.parts WHERE active AND database IN (${this.deps.databases.map(quoteString).join(', ')}) ` +
            `GROUP BY database, table, partition_id HAVING parts > ${limit} ORDER BY parts DESC`,
        );
        const crowded = new Map<string, { partitionId: string; parts: number }>();
        for (const r of rows) {
          const key = `${r.database}.${r.table}`;
          if (!crowded.has(key)) crowded.set(key, { partitionId: r.partitionId, parts: Number(r.parts) });
        }
        this.crowded = crowded;
      } catch (err) {
        this.deps.logger.debug({ err }, 'backpressure: could not count active parts; keeping the last count');
      }
    } else this.crowded = new Map();
    const m = this.deps.metrics.backpressure;
    m.set({ reason: 'lag' }, this.lagging() ? 1 : 0);
    m.set({ reason: 'parts' }, this.crowded.size);
  }

  private lagging(): boolean {
    return this.opts.maxApplyLagSeconds > 0 && this.lagSeconds > this.opts.maxApplyLagSeconds;
  }

  /**
   * Lets an insert into `table` ("db.t") in, or throws a 503 saying why not. The returned
   * function must be called once the insert is answered.
   */
  admit(table: string): () => void {
    const refuse = (reason: keyof typeof RETRY_AFTER_SECONDS, err: ChorusError): never => {
      this.deps.metrics.insertsRefused.inc({ reason });
      throw err;
    };
    if (this.lagging()) {
      refuse('lag', refusal('REPLICA_LAGGING', `this replica is ${this.lagSeconds.toFixed(1)} s behind in applying the shard's log (backpressure.maxApplyLagSeconds = ${this.opts.maxApplyLagSeconds}); nothing was stored: send the insert to another replica, or again later`, RETRY_AFTER_SECONDS.lag));
    }
    const crowded = this.crowded.get(table);
    if (crowded) {
      refuse('parts', refusal('TOO_MANY_PARTS', `${table} has ${crowded.parts} active parts in partition ${crowded.partitionId} here (the limit is ${this.partsLimit ?? FALLBACK_PARTS_TO_THROW}: backpressure.maxActivePartsPerPartition, or ClickHouse's parts_to_throw_insert); nothing was stored: send it again once merges catch up, and batch more rows per insert`, RETRY_AFTER_SECONDS.parts));
    }
    const onTable = this.runningPerTable.get(table) ?? 0;
    if (this.opts.maxConcurrentInserts > 0 && this.running >= this.opts.maxConcurrentInserts) {
      refuse('concurrency', refusal('TOO_MANY_INSERTS', `this replica runs ${this.running} inserts already (backpressure.maxConcurrentInserts); nothing was stored: send it again shortly`, RETRY_AFTER_SECONDS.concurrency));
    }
    if (this.opts.maxConcurrentInsertsPerTable > 0 && onTable >= this.opts.maxConcurrentInsertsPerTable) {
      refuse('concurrency', refusal('TOO_MANY_INSERTS', `this replica runs ${onTable} inserts into ${table} already (backpressure.maxConcurrentInsertsPerTable); nothing was stored: send it again shortly`, RETRY_AFTER_SECONDS.concurrency));
    }
    this.running++;
    this.runningPerTable.set(table, onTable + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running--;
      const left = (this.runningPerTable.get(table) ?? 1) - 1;
      if (left === 0) this.runningPerTable.delete(table);
      else this.runningPerTable.set(table, left);
    };
  }

  /** What holds inserts back now, for /readyz and status; empty when nothing does. */
  conditions(): string[] {
    const out: string[] = [];
    if (this.lagging()) out.push(`apply lag ${this.lagSeconds.toFixed(1)} s > backpressure.maxApplyLagSeconds (${this.opts.maxApplyLagSeconds}): inserts refused`);
    for (const [table, c] of this.crowded) out.push(`${table}: ${c.parts} active parts in partition ${c.partitionId} > ${this.partsLimit ?? FALLBACK_PARTS_TO_THROW} (backpressure.maxActivePartsPerPartition, or ClickHouse's parts_to_throw_insert): inserts into it refused`);
    return out;
  }
}
