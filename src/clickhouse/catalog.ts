import { createHash } from 'node:crypto';
import { ChorusError } from '../core/errors.js';
import { quoteIdent, quoteString, type ClickHouseHttp } from './http.js';

export interface TableInfo {
  database: string;
  name: string;
  engine: string;
  /** The table's data directories, one per disk that may hold its parts (`system.tables.data_paths`). */
  dataPaths: string[];
  /** Disks of the table's storage policy that are not local (S3, HDFS, web, ...): Chorus cannot copy their parts. */
  remoteDisks: string[];
  /** Changes whenever the table is re-created or altered: staging tables are keyed on it. */
  schemaKey: string;
}

/** Plain MergeTree family engines; Replicated* tables replicate themselves and are refused. */
export function isReplicableEngine(engine: string): boolean {
  return /MergeTree$/.test(engine) && !engine.startsWith('Replicated');
}

/** Disk types whose parts are ordinary files on a local filesystem, which hardlinks can copy. */
export function isLocalDiskType(type: string): boolean {
  return type.toLowerCase() === 'local';
}

/** The refusal of a table whose parts live (partly) on an object-storage disk. */
export function remoteStorageError(table: Pick<TableInfo, 'database' | 'name' | 'remoteDisks'>): ChorusError {
  return new ChorusError(
    'STORAGE_UNSUPPORTED',
    `table ${table.database}.${table.name} uses the non-local disk(s) ${table.remoteDisks.join(', ')}: Chorus copies parts as files on a local disk, and an object-storage disk keeps only metadata stubs there; keep replicated tables on local disks`,
  );
}

/**
 * Which tables Chorus replicates: every non-replicated MergeTree-family table in the
 * configured databases. Looked up on a miss and cached briefly, so a table created a
 * moment ago is found without a restart.
 */
export class TableCatalog {
  private cache = new Map<string, TableInfo>();
  private loadedAt = 0;
  /** Bumped by invalidate(): a reload that began before a schema change does not fill the cache after it. */
  private generation = 0;

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly databases: string[],
    private readonly ttlMs = 2000,
  ) {}

  /** Forgets every table: the next lookup asks ClickHouse again (a schema change was just applied here). */
  invalidate(): void {
    this.generation++;
    this.cache = new Map();
    this.loadedAt = 0;
  }

  /** Whether `database` is one Chorus replicates (configured), whether it exists or not. */
  coversDatabase(database: string): boolean {
    return this.databases.includes(database);
  }

  private async reload(): Promise<void> {
    const generation = this.generation;
    const dialect = this.ch.dialect;
    const list = this.databases.map(quoteString).join(', ');
    const rows = await this.ch.rows<{ database: string; name: string; engine: string; paths: string[]; create_table_query: string; policy: string }>(
      `SELECT database, name, engine, ${dialect.tableDataPaths} AS paths, create_table_query, ${dialect.hasDisks ? 'storage_policy' : "''"} AS policy
       FROM system.tables WHERE database IN (${list})`,
    );
    const remoteByPolicy = new Map<string, string[]>();
    if (dialect.hasDisks && rows.some((r) => r.policy)) {
      const disks = await this.ch.rows<{ policy: string; disk: string; type: string }>(
        `SELECT policy_name AS policy, disk, type FROM (SELECT policy_name, arrayJoin(disks) AS disk FROM system.storage_policies) AS p
         INNER JOIN (SELECT name, toString(type) AS type FROM system.disks) AS d ON p.disk = d.name`,
      );
      for (const d of disks) {
        const remote = remoteByPolicy.get(d.policy) ?? [];
        if (!isLocalDiskType(d.type)) remote.push(`${d.disk} (${d.type})`);
        remoteByPolicy.set(d.policy, remote);
      }
    }
    // A schema change applied while this ran may be missing from what was read: read again.
    if (generation !== this.generation) return this.reload();
    this.cache = new Map(
      rows.map((r) => [
        `${r.database}.${r.name}`,
        {
          database: r.database,
          name: r.name,
          engine: r.engine,
          dataPaths: r.paths,
          remoteDisks: remoteByPolicy.get(r.policy) ?? [],
          schemaKey: createHash('sha256').update(`${r.database}.${r.name}\n${r.create_table_query}`).digest('hex').slice(0, 12),
        },
      ]),
    );
    this.loadedAt = Date.now();
  }

  /** Every table Chorus replicates now (fresh from ClickHouse). */
  async replicated(): Promise<TableInfo[]> {
    await this.reload();
    return [...this.cache.values()].filter((t) => isReplicableEngine(t.engine));
  }

  /** The table if Chorus replicates it; a ChorusError naming why not otherwise. */
  async resolve(database: string, table: string): Promise<TableInfo> {
    const key = `${database}.${table}`;
    if (!this.cache.has(key) || Date.now() - this.loadedAt > this.ttlMs) await this.reload();
    const info = this.cache.get(key);
    if (info && isReplicableEngine(info.engine)) {
      if (info.remoteDisks.length > 0) throw remoteStorageError(info);
      return info;
    }
    if (info) {
      throw new ChorusError('NOT_REPLICATED_TABLE', `table ${key} has engine ${info.engine}; Chorus replicates only non-replicated MergeTree-family tables`);
    }
    if (!this.databases.includes(database)) {
      const exists = await this.ch.rows<{ n: number }>(
        `SELECT count() AS n FROM system.tables WHERE database = ${quoteString(database)} AND name = ${quoteString(table)}`,
      );
      if (exists[0]?.n) {
        throw new ChorusError('NOT_REPLICATED_TABLE', `table ${key} is outside the replicated databases (${this.databases.join(', ')})`);
      }
    }
    throw new ChorusError('UNKNOWN_TABLE', `table ${key} does not exist`);
  }
}

/**
 * The statement a clone runs to create a table is the source's `create_table_query`, so it is
 * held to what that column holds for a table Chorus replicates: a CREATE TABLE of exactly that
 * table with a plain MergeTree-family engine, not a table function, a SELECT or another engine.
 */
export function checkCreateQuery(t: { database: string; table: string; createQuery: string }): void {
  const refuse = (why: string) => new ChorusError('PEER_UNAVAILABLE', `refusing to create ${t.database}.${t.table} from a peer's statement: ${why}`);
  const name = (n: string) => `(?:${escapeRegExp(n)}|${escapeRegExp(quoteIdent(n))}|\x60${escapeRegExp(n)}\x60)`;
  if (!new RegExp(`^CREATE TABLE ${name(t.database)}\\.${name(t.table)}\\s*\\(`).test(t.createQuery)) throw refuse('it does not create this table');
  // Literals and quoted names cannot hide a clause: look at the statement without them.
  const bare = t.createQuery.replace(/'(?:[^'\\]|\\.)*'/g, "''").replace(/\x60(?:[^\x60\\]|\\.)*\x60/g, '``');
  const engines = [...bare.matchAll(/\bENGINE\s*=\s*(\w+)/gi)].map((m) => m[1]!);
  if (engines.length !== 1 || !isReplicableEngine(engines[0]!)) throw refuse(`engine ${engines.join(', ') || '(none)'}`);
  if (/;|\bAS\s+SELECT\b|\bON\s+CLUSTER\b|\bPOPULATE\b/i.test(bare)) throw refuse('it holds more than a table definition');
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
