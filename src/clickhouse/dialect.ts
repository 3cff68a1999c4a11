import { ChorusError } from '../core/errors.js';

/**
 * Everything Chorus does differently by ClickHouse version, in one place. The rest of the code
 * asks this object what to say (a column, a setting, a statement), never for a version number.
 * Measured on 18.16 (Debian) and 26.7 (chdb); releases between are placed by the changelog
 * entries of the features named below.
 */
export class Dialect {
  readonly major: number;
  readonly minor: number;

  constructor(readonly version: string) {
    const m = /^(\d+)\.(\d+)/.exec(version);
    if (!m) throw new ChorusError('CLICKHOUSE_ERROR', `cannot read ClickHouse's version from ${JSON.stringify(version)}`);
    this.major = Number(m[1]);
    this.minor = Number(m[2]);
  }

  private atLeast(major: number, minor = 0): boolean {
    return this.major > major || (this.major === major && this.minor >= minor);
  }

  /**
   * `system.tables` as an `Array(String)` of the table's data directories: one per disk that
   * holds it. 18.16 has a single `data_path`; 19.15 added `data_paths` and later releases
   * dropped `data_path`.
   */
  get tableDataPaths(): string {
    return this.atLeast(19, 15) ? 'data_paths' : '[data_path]';
  }

  /** Whether `system.disks` and storage policies exist (19.15 and later). */
  get hasDisks(): boolean {
    return this.atLeast(19, 15);
  }

  /**
   * `ALTER TABLE t DETACH PART 'p'` / `DROP PART 'p'`: a syntax error on 18.16, present on 20.1
   * and every release after it (the contract tests check both ends).
   */
  get hasDetachPart(): boolean {
    return this.atLeast(20, 1);
  }

  /**
   * Settings every staging insert carries, so that one insert makes exactly the parts of its
   * rows: no asynchronous insert buffering them with other inserts (21.11+, and on by default
   * in chdb) and no deduplication inside the staging table, which a `non_replicated_deduplication_window`
   * copied from the target would otherwise apply (21.3+) and so leave a retried insert with no part.
   */
  get stagingSettings(): Record<string, string> {
    const settings: Record<string, string> = {};
    if (this.atLeast(21, 3)) settings.insert_deduplicate = '0';
    if (this.atLeast(21, 11)) settings.async_insert = '0';
    return settings;
  }

  /**
   * A statement that, run as a client's ClickHouse user, fails exactly when that user may not do
   * `action` to `qualified` and otherwise changes nothing; `granted` is the answer it gives
   * when it reports rather than fails (CHECK GRANT answers 0 or 1).
   * - insert: an INSERT of no rows writes no part, and ClickHouse checks the user's rights
   *   (readonly profiles and allow_databases on 18.16, the INSERT grant with RBAC) first.
   * - drop_partition: a partition ID no partition has (partition IDs are digits, hex hashes and
   *   `-`; newer releases refuse an ID of other characters, so letters only) drops nothing.
   * - truncate: `CHECK GRANT TRUNCATE` from 24.7; before it, the drop probe, which checks the same
   *   rights on 18.16 (readonly, allow_databases) and ALTER DELETE where RBAC exists without
   *   CHECK GRANT (20.x-24.6: an approximation, ClickHouse still checks TRUNCATE on apply).
   */
  grantProbe(action: 'insert' | 'drop_partition' | 'truncate', qualified: string): { sql: string; granted?: string } {
    if (action === 'insert') return { sql: `INSERT INTO ${qualified} FORMAT TabSeparated` };
    if (action === 'truncate' && this.atLeast(24, 7)) return { sql: `CHECK GRANT TRUNCATE ON ${qualified}`, granted: '1' };
    return { sql: `ALTER TABLE ${qualified} DROP PARTITION ID 'chorusgrantprobe'` };
  }

  /** The name ClickHouse gives a database engine that keeps table files under `store/<uuid>` (20.10+ default). */
  get defaultDatabaseEngine(): 'Atomic' | 'Ordinary' {
    return this.atLeast(20, 10) ? 'Atomic' : 'Ordinary';
  }
}

/** A part's name: partition id, min block, max block, level, and a mutation version on newer releases. */
export interface PartName {
  partitionId: string;
  minBlock: number;
  maxBlock: number;
  level: number;
  mutation: number | undefined;
}

// Partition IDs hold no underscore, so tmp_insert_..., delete_tmp_... and detached never match.
const PART_NAME = /^([A-Za-z0-9-]+)_(\d+)_(\d+)_(\d+)(?:_(\d+))?$/;

/** Reads a MergeTree part name of any supported release (`p_1_1_0`, or `p_1_1_0_5` once mutated). */
export function parsePartName(name: string): PartName | undefined {
  const m = PART_NAME.exec(name);
  if (!m) return undefined;
  const part = { partitionId: m[1]!, minBlock: Number(m[2]), maxBlock: Number(m[3]), level: Number(m[4]), mutation: m[5] === undefined ? undefined : Number(m[5]) };
  // A table of the pre-2017 syntax names parts `20261101_20261130_1_1_0` (min date, max date,
  // blocks, level), which the pattern reads as a mutated part with min block > max block.
  // Not a name of the current format: callers then ask system.parts.
  return part.minBlock <= part.maxBlock ? part : undefined;
}
