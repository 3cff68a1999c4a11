import { createHash } from 'node:crypto';
import { ChorusError } from '../core/errors.js';
import { quoteString, type ClickHouseHttp } from './http.js';

export interface TableInfo {
  database: string;
  name: string;
  engine: string;
  dataPath: string;
  /** Changes whenever the table is re-created or altered: staging tables are keyed on it. */
  schemaKey: string;
}

/** Plain MergeTree family engines; Replicated* tables replicate themselves and are refused. */
export function isReplicableEngine(engine: string): boolean {
  return /MergeTree$/.test(engine) && !engine.startsWith('Replicated');
}

/**
 * Which tables Chorus replicates: every non-replicated MergeTree-family table in the
 * configured databases. Looked up on a miss and cached briefly, so a table created a
 * moment ago is found without a restart.
 */
export class TableCatalog {
  private cache = new Map<string, TableInfo>();
  private loadedAt = 0;

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly databases: string[],
    private readonly ttlMs = 2000,
  ) {}

  private async reload(): Promise<void> {
    const list = this.databases.map(quoteString).join(', ');
    const rows = await this.ch.rows<{ database: string; name: string; engine: string; data_path: string; create_table_query: string }>(
      `SELECT database, name, engine, data_path, create_table_query FROM system.tables WHERE database IN (${list})`,
    );
    this.cache = new Map(
      rows.map((r) => [
        `${r.database}.${r.name}`,
        {
          database: r.database,
          name: r.name,
          engine: r.engine,
          dataPath: r.data_path,
          schemaKey: createHash('sha256').update(`${r.database}.${r.name}\n${r.create_table_query}`).digest('hex').slice(0, 12),
        },
      ]),
    );
    this.loadedAt = Date.now();
  }

  /** The table if Chorus replicates it; a ChorusError naming why not otherwise. */
  async resolve(database: string, table: string): Promise<TableInfo> {
    const key = `${database}.${table}`;
    if (!this.cache.has(key) || Date.now() - this.loadedAt > this.ttlMs) await this.reload();
    const info = this.cache.get(key);
    if (info && isReplicableEngine(info.engine)) return info;
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
