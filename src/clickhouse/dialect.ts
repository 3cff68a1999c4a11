import { ChorusError } from '../core/errors.js';

/**
 * Everything Chorus does differently by ClickHouse version, in one place. The rest of the code
 * asks this object what to say (a column, a setting, a statement), never for a version number.
 * Measured on 18.16 (Debian) and 26.7 (chdb); releases between are placed by the changelog
 * entries of the features named below.
 */
/** What a client asks Chorus to do to a replicated table, and the grant ClickHouse asks for it. */
const GRANTS = {
  insert: 'INSERT',
  drop_partition: 'ALTER DELETE',
  truncate: 'TRUNCATE',
  alter_delete: 'ALTER DELETE',
  alter_update: 'ALTER UPDATE',
  alter_clear_column: 'ALTER CLEAR COLUMN',
} as const;
/** A named action, or any other grant ClickHouse knows (`ALTER ADD COLUMN`, `CREATE TABLE`...) for a schema change. */
export type GrantAction = keyof typeof GRANTS | { grant: string };
/** The grant action of each grant a mutation asks for (MutationOp.grants). */
export const MUTATION_GRANTS: Record<string, GrantAction> = { 'ALTER DELETE': 'alter_delete', 'ALTER UPDATE': 'alter_update', 'ALTER CLEAR COLUMN': 'alter_clear_column' };

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
  /**
   * Whether a drop can leave merged-away parts uncovered on disk, which a restart loads again:
   * 18.16 does (measured: kill -9 after TRUNCATE of merged parts brought their rows back); 26.7
   * covers dropped ranges with empty parts and does not. Releases from 22 drop that way.
   */
  get dropLeavesMergedPartsUncovered(): boolean {
    return !this.atLeast(22);
  }

  /**
   * Whether ClickHouse may answer OK for a part it could not finish writing. 18.16 flushes the
   * last buffer of a file in its destructor and only logs a failure there: on a full disk an
   * INSERT succeeded with an empty checksums.txt, and an ATTACH PART (which rewrites
   * columns.txt) left an empty one (measured). Later releases finalize a part's files before
   * answering, so a failed write fails the query: 26.7 (chdb) stored every insert of the same
   * disk-filling test whole without these checks. They (parsing a part's metadata) are kept to
   * the releases that need them.
   */
  get mayLeavePartsIncomplete(): boolean {
    return !this.atLeast(22);
  }

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
   * Statements that, run as a client's ClickHouse user, fail exactly when that user may not do
   * `action` to `qualified` and otherwise change nothing. A probe with `granted` reports rather
   * than fails: any other answer is a refusal, said as `refusal` (ClickHouse's code and text).
   * - 24.7 and later: `CHECK GRANT INSERT|ALTER DELETE|TRUNCATE ON t`, and the user's `readonly`
   *   setting (a profile's readonly is no grant, and CHECK GRANT does not see it). An empty
   *   INSERT is no probe there: 26.7 answers NO_DATA_TO_INSERT whatever the rights.
   * - Before (18.16, no RBAC): an INSERT of no rows, or a DROP of a partition ID no partition
   *   has (IDs are digits, hex and `-`; newer releases refuse other characters, so letters only),
   *   which ClickHouse refuses for a readonly profile or a database outside allow_databases and
   *   otherwise does nothing. TRUNCATE is checked with the drop, the same rights on 18.16.
   *   Releases between 20.1 and 24.6 (RBAC without CHECK GRANT) are untested: the drop probe
   *   checks ALTER DELETE there, not TRUNCATE.
   */
  grantProbes(action: GrantAction, qualified: string, user: string): GrantProbe[] {
    const readonlyProbe: GrantProbe = {
      sql: "SELECT getSetting('readonly')",
      granted: '0',
      refusal: { status: 403, code: 164, text: `Code: 164. DB::Exception: ${user}: Cannot execute query in readonly mode. (READONLY)` },
    };
    if (this.atLeast(24, 7)) {
      const grant = typeof action === 'string' ? GRANTS[action] : action.grant;
      return [
        {
          sql: `CHECK GRANT ${grant} ON ${qualified}`,
          granted: '1',
          refusal: {
            status: 403,
            code: 497,
            text: `Code: 497. DB::Exception: ${user}: Not enough privileges. To execute this query, it's necessary to have the grant ${grant} ON ${qualified.replace(/`/g, '')}. (ACCESS_DENIED)`,
          },
        },
        readonlyProbe,
      ];
    }
    if (action === 'insert') return [{ sql: `INSERT INTO ${qualified} FORMAT TabSeparated` }];
    // A whole database (a table to create): only a readonly profile is refused before ClickHouse
    // itself runs the statement on every replica. 18.16 names the setting in system.settings.
    if (qualified.endsWith('.*')) return [{ ...readonlyProbe, sql: "SELECT value FROM system.settings WHERE name = 'readonly'" }];
    return [{ sql: `ALTER TABLE ${qualified} DROP PARTITION ID 'chorusgrantprobe'` }];
  }

  /** Lightweight `DELETE FROM t WHERE ...` (23.3+, where it is on by default). */
  get hasLightweightDelete(): boolean {
    return this.atLeast(23, 3);
  }

  /**
   * Settings that make a mutation's ALTER (or lightweight DELETE) return once submitted, whatever
   * the user's profile says: chdb, for one, defaults to `mutations_sync=1`. Chorus waits for
   * the mutation itself (system.mutations). 18.16 has neither setting and never waits.
   */
  get submitMutationSettings(): Record<string, string> {
    const settings: Record<string, string> = {};
    if (this.atLeast(19, 11)) settings.mutations_sync = '0';
    if (this.atLeast(24, 4)) settings.lightweight_deletes_sync = '0';
    return settings;
  }

  /** `system.mutations.latest_fail_reason` (19.14+): why a mutation has not finished yet. */
  get mutationFailReason(): string {
    return this.atLeast(19, 14) ? 'latest_fail_reason' : "''";
  }

  /** `EXPLAIN` (20.6+): how a client's SELECT is checked against its rights without running it. */
  get hasExplain(): boolean {
    return this.atLeast(20, 6);
  }

  /** The name ClickHouse gives a database engine that keeps table files under `store/<uuid>` (20.10+ default). */
  get defaultDatabaseEngine(): 'Atomic' | 'Ordinary' {
    return this.atLeast(20, 10) ? 'Atomic' : 'Ordinary';
  }
}

export interface GrantProbe {
  sql: string;
  granted?: string;
  refusal?: { status: number; code: number; text: string };
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
