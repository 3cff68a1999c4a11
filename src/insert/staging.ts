import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TableInfo } from '../clickhouse/catalog.js';
import { parsePartName } from '../clickhouse/dialect.js';
import { ChorusError } from '../core/errors.js';
import { quoteIdent, quoteString, type ClickHouseHttp } from '../clickhouse/http.js';

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

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly poolSize: number,
  ) {}

  /** Creates the staging database and empties staging tables an earlier run left behind. */
  async init(): Promise<void> {
    await this.ch.exec(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(STAGING_DATABASE)}`);
    const leftovers = await this.ch.rows<{ name: string }>(`SELECT name FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)}`);
    for (const { name } of leftovers) await this.ch.exec(`DROP TABLE IF EXISTS ${quoteIdent(STAGING_DATABASE)}.${quoteIdent(name)}`);
  }

  /** A data directory of this ClickHouse (a small probe table's), to check the filesystem against. */
  async probeDataPath(): Promise<string> {
    const probe = `${quoteIdent(STAGING_DATABASE)}.${quoteIdent('probe')}`;
    await this.ch.exec(`CREATE TABLE IF NOT EXISTS ${probe} (x UInt8) ENGINE = MergeTree ORDER BY x`);
    return (await this.dataPathsOf('probe'))[0]!;
  }

  private async dataPathsOf(name: string): Promise<string[]> {
    const [row] = await this.ch.rows<{ p: string[] }>(
      `SELECT ${this.ch.dialect.tableDataPaths} AS p FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)} AND name = ${quoteString(name)}`,
    );
    if (!row || row.p.length === 0) throw new ChorusError('CLICKHOUSE_ERROR', `staging table ${STAGING_DATABASE}.${name} has no data directory`);
    return row.p;
  }

  async acquire(table: TableInfo): Promise<StagingTable> {
    const key = table.schemaKey;
    let name = this.free.get(key)?.pop();
    if (!name) {
      const count = this.counts.get(key) ?? 0;
      if (count < this.poolSize) {
        this.counts.set(key, count + 1);
        name = `s_${key}_${count}`;
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
        await this.ch.exec(`CREATE TABLE IF NOT EXISTS ${qualified} AS ${quoteIdent(table.database)}.${quoteIdent(table.name)}`);
        await this.ch.exec(`SYSTEM STOP MERGES ${qualified}`);
        state = { dataPaths: await this.dataPathsOf(name), blockFloor: 0 };
        this.created.set(name, state);
      } catch (err) {
        // The slot goes back to the pool, or every slot would leak while ClickHouse is down.
        this.handBack(table.schemaKey, name);
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
        );
        staging.blockFloor = 0;
        for (const p of active) staging.blockFloor = Math.max(staging.blockFloor, parsePartName(p.name)?.maxBlock ?? 0);
        return active;
      },
    };
  }

  /** Empties the staging table and hands it to the next insert. */
  async release(table: TableInfo, staging: StagingTable): Promise<void> {
    try {
      await this.ch.exec(`TRUNCATE TABLE ${staging.qualified}`);
    } catch {
      // Not reusable in an unknown state: drop it; acquire() re-creates it.
      await this.ch.exec(`DROP TABLE IF EXISTS ${staging.qualified}`).catch(() => undefined);
      this.created.delete(staging.name);
    }
    this.handBack(table.schemaKey, staging.name);
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
