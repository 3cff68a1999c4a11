import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TableInfo } from '../clickhouse/catalog.js';
import { parsePartName } from '../clickhouse/dialect.js';
import { ChorusError } from '../core/errors.js';
import { ClickHouseQueryError, quoteIdent, quoteString, type ClickHouseHttp } from '../clickhouse/http.js';
import type { StepLabel } from '../metrics/metrics.js';

/** The insert steps whose ClickHouse queries this pool sends (see chorus_clickhouse_queries_total). */
const ACQUIRE: StepLabel = { step: 'staging.acquire', role: 'origin' };
const PARTS: StepLabel = { step: 'staging.parts', role: 'origin' };
const RELEASE: StepLabel = { step: 'staging.release', role: 'origin' };

export const STAGING_DATABASE = '_chorus';

export interface StagedPart {
  name: string;
  partitionId: string;
  path: string;
  rows: number;
  level: number;
}

export interface StagingTable {
  name: string;
  /** `_chorus`.`name`, ready to put in SQL. */
  qualified: string;
  parts(): Promise<StagedPart[]>;
}

interface StagingState {
  /** One per disk of the staging table's storage policy (copied from the target's). */
  dataPaths: string[];
  /** Every part of an earlier insert had a block number at or below this. */
  blockFloor: number;
}

/**
 * One staging table per in-flight insert, from a small pool per target table, so the parts
 * found in a staging table are exactly one insert's parts. Merges are stopped on them: a merge
 * would change which parts an insert produced, and so its block IDs.
 */
export class StagingPool {
  private free = new Map<string, string[]>();
  private created = new Map<string, StagingState>();
  private waiters = new Map<string, Array<(name: string) => void>>();
  private counts = new Map<string, number>();
  /** When each pool last handed out a table: pools idle longer than `idleDropMs` are dropped. */
  private lastUsed = new Map<string, number>();
  private sweeper: NodeJS.Timeout | undefined;
  private serial = 0;
  /** Staging tables a sweep could not drop: dropped by a later sweep. */
  private undropped = new Set<string>();

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly poolSize: number,
    private readonly idleDropMs = 10 * 60_000,
  ) {}

  /** Creates the staging database and empties staging tables an earlier run left behind. */
  async init(): Promise<void> {
    await this.ch.exec(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(STAGING_DATABASE)}`);
    const leftovers = await this.ch.rows<{ name: string }>(`SELECT name FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)}`);
    for (const { name } of leftovers) await this.ch.exec(`DROP TABLE IF EXISTS ${quoteIdent(STAGING_DATABASE)}.${quoteIdent(name)}`);
    if (!this.sweeper) {
      this.sweeper = setInterval(() => void this.sweep().catch(() => undefined), Math.max(1000, Math.floor(this.idleDropMs / 4)));
      this.sweeper.unref();
    }
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** Staging tables of this many schemas (one pool per target table and structure) exist now. */
  get poolCount(): number {
    return this.counts.size;
  }

  /**
   * Drops the staging tables of pools unused for `idleDropMs` (their target was dropped or
   * altered, which gives it a new schema key, or it takes no inserts) and forgets them, so the
   * maps and `_chorus` hold only what is in use. A pool with a table handed out is left alone.
   */
  async sweep(now = Date.now()): Promise<void> {
    for (const name of [...this.undropped]) {
      await this.ch.exec(`DROP TABLE IF EXISTS ${quoteIdent(STAGING_DATABASE)}.${quoteIdent(name)}`).then(
        () => this.undropped.delete(name),
        () => undefined,
      );
    }
    for (const [key, count] of [...this.counts]) {
      const free = this.free.get(key) ?? [];
      if (free.length < count || now - (this.lastUsed.get(key) ?? 0) < this.idleDropMs) continue;
      this.free.delete(key);
      this.counts.delete(key);
      this.lastUsed.delete(key);
      for (const name of free) {
        this.created.delete(name);
        await this.ch.exec(`DROP TABLE IF EXISTS ${quoteIdent(STAGING_DATABASE)}.${quoteIdent(name)}`).catch(() => this.undropped.add(name));
      }
    }
  }

  /** A data directory of this ClickHouse (a small probe table's), to check the filesystem against. */
  async probeDataPath(): Promise<string> {
    const probe = `${quoteIdent(STAGING_DATABASE)}.${quoteIdent('probe')}`;
    await this.ch.exec(`CREATE TABLE IF NOT EXISTS ${probe} (x UInt8) ENGINE = MergeTree ORDER BY x`);
    return (await this.dataPathsOf('probe'))[0]!;
  }

  private async dataPathsOf(name: string, step?: StepLabel): Promise<string[]> {
    const [row] = await this.ch.rows<{ p: string[] }>(
      `SELECT ${this.ch.dialect.tableDataPaths} AS p FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)} AND name = ${quoteString(name)}`,
      { step },
    );
    if (!row || row.p.length === 0) throw new ChorusError('CLICKHOUSE_ERROR', `staging table ${STAGING_DATABASE}.${name} has no data directory`);
    return row.p;
  }

  async acquire(table: TableInfo): Promise<StagingTable> {
    const key = table.schemaKey;
    this.lastUsed.set(key, Date.now());
    let name = this.free.get(key)?.pop();
    if (!name) {
      const count = this.counts.get(key) ?? 0;
      if (count < this.poolSize) {
        this.counts.set(key, count + 1);
        // Never a name used before in this process: a swept pool's tables may still be dropping.
        name = `s_${key}_${this.serial++}`;
      } else {
        name = await new Promise<string>((resolve) => {
          const list = this.waiters.get(key) ?? [];
          list.push(resolve);
          this.waiters.set(key, list);
        });
      }
    }
    const qualified = `${quoteIdent(STAGING_DATABASE)}.${quoteIdent(name)}`;
    let state = this.created.get(name);
    if (!state) {
      try {
        state = await this.prepare(name, qualified, table);
        this.created.set(name, state);
      } catch (err) {
        // The slot goes back to the pool, or every slot would leak while ClickHouse is down; when
        // ClickHouse answered, under a new name: a CREATE that failed half-way can leave the name
        // unusable (18.16 keeps its metadata .sql.tmp after a full disk, and every later CREATE of
        // it fails "File exists").
        if (err instanceof ClickHouseQueryError) {
          this.undropped.add(name);
          this.handBack(table.schemaKey, `s_${key}_${this.serial++}`);
        } else this.handBack(table.schemaKey, name);
        throw err;
      }
    }
    const staging = state;
    const stagingName = name;
    return {
      name,
      qualified,
      parts: async () => {
        const found = listStagedParts(staging);
        if (found.length > 0) return found;
        // Nothing above the floor: an empty insert, or block numbers that started again from 1
        // (ClickHouse restarted while the table was empty). Only ClickHouse can tell which.
        const active = await this.ch.rows<StagedPart>(
          `SELECT name, partition_id AS partitionId, path, rows, level FROM system.parts
           WHERE database = ${quoteString(STAGING_DATABASE)} AND table = ${quoteString(stagingName)} AND active ORDER BY name`,
          { step: PARTS },
        );
        staging.blockFloor = 0;
        for (const p of active) staging.blockFloor = Math.max(staging.blockFloor, parsePartName(p.name)?.maxBlock ?? 0);
        return active;
      },
    };
  }

  /**
   * A staging table proven empty: created if missing, emptied if it exists (an earlier run's,
   * or one whose emptying failed), checked to hold no active part, and with a block floor above
   * every part directory still on disk, so that no earlier insert's part is ever read as this
   * insert's. Throws (and the table is not handed out) when any step fails.
   */
  private async prepare(name: string, qualified: string, table: TableInfo): Promise<StagingState> {
    await this.ch.exec(`CREATE TABLE IF NOT EXISTS ${qualified} AS ${quoteIdent(table.database)}.${quoteIdent(table.name)}`, { step: ACQUIRE });
    await this.ch.exec(`SYSTEM STOP MERGES ${qualified}`, { step: ACQUIRE });
    await this.ch.exec(`TRUNCATE TABLE ${qualified}`, { step: ACQUIRE });
    const [left] = await this.ch.rows<{ n: number }>(
      `SELECT count() AS n FROM system.parts WHERE database = ${quoteString(STAGING_DATABASE)} AND table = ${quoteString(name)} AND active`,
      { step: ACQUIRE },
    );
    if (Number(left?.n ?? 0) !== 0) throw new ChorusError('CLICKHOUSE_ERROR', `staging table ${STAGING_DATABASE}.${name} still holds ${left!.n} parts after TRUNCATE`);
    const state: StagingState = { dataPaths: await this.dataPathsOf(name, ACQUIRE), blockFloor: 0 };
    state.blockFloor = floorOnDisk(state.dataPaths);
    return state;
  }

  /**
   * Empties the staging table and hands it to the next insert. A table that could not be
   * emptied is handed back unprepared: the next acquire() must prove it empty (prepare) before
   * any insert uses it, and fails rather than hand out a table that may hold an earlier
   * insert's parts.
   */
  async release(table: TableInfo, staging: StagingTable, opts: { mayStillRun?: boolean } = {}): Promise<void> {
    if (opts.mayStillRun) return this.retire(table, staging);
    try {
      await this.ch.exec(`TRUNCATE TABLE ${staging.qualified}`, { step: RELEASE });
    } catch (err) {
      this.created.delete(staging.name);
      this.handBack(table.schemaKey, staging.name);
      throw err;
    }
    this.handBack(table.schemaKey, staging.name);
  }

  /**
   * An INSERT cut on Chorus's side (the client went away, its body ended early) may still run
   * in ClickHouse, and 18.16 takes a chunked body that ends early as complete: its part could
   * land after any TRUNCATE and be read as the next insert's. Such a staging table is never used
   * again: the query is ended (KILL ... SYNC; the name is pieced together so that the KILL does
   * not match itself), the table dropped, and its slot handed on under a new name, which the
   * next acquire() creates and proves empty.
   */
  private async retire(table: TableInfo, staging: StagingTable): Promise<void> {
    const key = table.schemaKey;
    this.created.delete(staging.name);
    try {
      const [db, name] = [quoteIdent(STAGING_DATABASE), quoteIdent(staging.name)];
      // Best effort: DROP waits for a query still writing into the table in any case.
      await this.ch.exec(`KILL QUERY WHERE position(query, concat(${quoteString(db)}, '.', ${quoteString(name)})) > 0 SYNC`, { step: RELEASE }).catch(() => undefined);
      await this.ch.exec(`DROP TABLE IF EXISTS ${staging.qualified}`, { step: RELEASE }).catch(() => this.undropped.add(staging.name));
    } finally {
      this.handBack(key, `s_${key}_${this.serial++}`);
    }
  }

  private handBack(key: string, name: string): void {
    const waiter = this.waiters.get(key)?.shift();
    if (waiter) waiter(name);
    else {
      const list = this.free.get(key) ?? [];
      list.push(name);
      this.free.set(key, list);
    }
  }
}

/**
 * The parts one insert left in a staging table, read from its directory rather than asked of
 * system.parts (one query less per insert). Staging tables do not merge and are emptied after
 * each insert; a directory an emptied table still shows (newer releases remove outdated parts
 * later) has block numbers at or below the previous insert's, and is skipped.
 */
function listStagedParts(state: StagingState): StagedPart[] {
  const parts: StagedPart[] = [];
  const ranges: Array<{ partition: string; min: number; max: number }> = [];
  for (const dataPath of state.dataPaths) {
    let names: string[];
    try {
      names = readdirSync(dataPath);
    } catch {
      continue; // a disk directory ClickHouse creates only when a part first lands there
    }
    for (const name of names) {
      const parsed = parsePartName(name);
      if (!parsed || parsed.minBlock <= state.blockFloor) continue;
      const path = join(dataPath, name);
      parts.push({ name, partitionId: parsed.partitionId, path, rows: Number(readFileSync(join(path, 'count.txt'), 'utf8')), level: parsed.level });
      ranges.push({ partition: parsed.partitionId, min: parsed.minBlock, max: parsed.maxBlock });
    }
  }
  // A merged part next to its sources (merges resume after a ClickHouse restart) cannot be told
  // apart on disk: overlapping block ranges send the caller to system.parts instead.
  const overlap = ranges.some((a, i) => ranges.some((b, j) => i !== j && a.partition === b.partition && a.min <= b.max && b.min <= a.max));
  if (overlap) return [];
  for (const r of ranges) state.blockFloor = Math.max(state.blockFloor, r.max);
  return parts.sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** The highest block number of any part directory on disk: parts at or below it are not new. */
function floorOnDisk(dataPaths: string[]): number {
  let floor = 0;
  for (const dataPath of dataPaths) {
    let names: string[];
    try {
      names = readdirSync(dataPath);
    } catch {
      continue;
    }
    for (const name of names) floor = Math.max(floor, parsePartName(name)?.maxBlock ?? 0);
  }
  return floor;
}

/**
 * partition id + 128 bits of a hash of the table and the part's content (or the dedup token),
 * like ReplicatedMergeTree's block IDs. The table is in the hash because Chorus keeps one
 * dedup window per shard where ReplicatedMergeTree keeps one per table: the same rows sent to
 * two tables are two blocks.
 */
export function blockIdOf(table: { database: string; name: string }, partitionId: string, checksumsSha256: string, token?: { value: string; index: number }): string {
  const content = token ? `token:${token.value}:${token.index}` : `content:${checksumsSha256}`;
  const hash = createHash('sha256').update(`${table.database}.${table.name}\n${partitionId}\n${content}`).digest('hex');
  return `${partitionId}_${hash.slice(0, 32)}`;
}
