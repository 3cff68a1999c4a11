import { createHash } from 'node:crypto';
import type { TableInfo } from '../clickhouse/catalog.js';
import { quoteIdent, quoteString, type ClickHouseHttp } from '../clickhouse/http.js';

export const STAGING_DATABASE = '_chorus';

export interface StagedPart {
  name: string;
  partitionId: string;
  path: string;
  rows: number;
  bytes: number;
  level: number;
}

export interface StagingTable {
  name: string;
  /** `_chorus`.`name`, ready to put in SQL. */
  qualified: string;
  parts(): Promise<StagedPart[]>;
}

/**
 * One staging table per in-flight insert, from a small pool per target table, so the parts
 * found in a staging table are exactly one insert's parts. Merges are stopped on them: a merge
 * would change which parts an insert produced, and so its block IDs.
 */
export class StagingPool {
  private free = new Map<string, string[]>();
  private created = new Set<string>();
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
    const [row] = await this.ch.rows<{ p: string }>(
      `SELECT data_path AS p FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)} AND name = 'probe'`,
    );
    return row!.p;
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
    if (!this.created.has(name)) {
      await this.ch.exec(`CREATE TABLE IF NOT EXISTS ${qualified} AS ${quoteIdent(table.database)}.${quoteIdent(table.name)}`);
      await this.ch.exec(`SYSTEM STOP MERGES ${qualified}`);
      this.created.add(name);
    }
    const stagingName = name;
    return {
      name: stagingName,
      qualified,
      parts: () =>
        this.ch.rows<StagedPart>(
          `SELECT name, partition_id AS partitionId, path, rows, bytes_on_disk AS bytes, level FROM system.parts
           WHERE database = ${quoteString(STAGING_DATABASE)} AND table = ${quoteString(stagingName)} AND active ORDER BY name`,
        ),
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
    const waiter = this.waiters.get(table.schemaKey)?.shift();
    if (waiter) waiter(staging.name);
    else {
      const list = this.free.get(table.schemaKey) ?? [];
      list.push(staging.name);
      this.free.set(table.schemaKey, list);
    }
  }
}

/** partition id + 128 bits of the content hash (or of the dedup token), like ReplicatedMergeTree's block IDs. */
export function blockIdOf(partitionId: string, checksumsSha256: string, token?: { value: string; index: number }): string {
  const hash = token
    ? createHash('sha256').update(`token:${token.value}:${token.index}`).digest('hex')
    : checksumsSha256;
  return `${partitionId}_${hash.slice(0, 32)}`;
}
