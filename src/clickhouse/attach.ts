import { createHash } from 'node:crypto';
import { existsSync, linkSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyedMutex } from '../core/async.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Faults } from '../faults/faults.js';
import type { LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics, StepLabel, StepRole } from '../metrics/metrics.js';
import { columnsProblem } from '../parts/completeness.js';
import { fsyncPath, sha256File } from '../parts/files.js';
import type { PartStore } from '../parts/store.js';
import type { TableCatalog, TableInfo } from './catalog.js';
import { parsePartName } from './dialect.js';
import { ClickHouseQueryError, quoteIdent, quoteQualified, quoteString, type ClickHouseHttp } from './http.js';
import { canonicalPartition } from './partition.js';
import { mutationStatement, parseMutation, parseSchema, schemaStatement, type SchemaOp } from '../insert/parse.js';

/**
 * Origin and followers attach the same way: hardlink the part from the part store into the
 * table's detached/, ATTACH PART, and find the part ClickHouse made of it. ClickHouse gives it
 * a new block number, so the result is recognised by content, never guessed from its name.
 */
export class Attacher {
  private readonly perTable = new KeyedMutex();
  /**
   * Per table, a block number no new part can be at or below. Attaches are serialised per
   * table, so after one the attached block is a valid bound; a bound that is too low (parts
   * inserted around Chorus) only widens the search, which matches by content anyway.
   */
  private readonly blockFloor = new Map<string, number>();
  /**
   * Per table's set of data directories, the one on the part store's volume and its owner. Two
   * stats in the thread pool before every attach waited behind the part server's reads (2.4 ms
   * of a W2 insert's 41 on the origin); a table dropped and created again under a new directory
   * has another key, and one dropped for good fails at its missing `detached/` parent.
   */
  private readonly dataDirs = new Map<string, Promise<{ path: string; owner: { uid: number; gid: number } }>>();

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly catalog: TableCatalog,
    private readonly store: PartStore,
    private readonly log: LocalLog,
    private readonly faults: Faults,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {}

  /**
   * Attaches `entry`'s part from the part store; returns the local block number it was given.
   * `role` says whose step it is in the step timings (the insert's origin, or a follower applying it).
   */
  attach(entry: LogEntry, role: StepRole = 'follower'): Promise<number> {
    // One attach at a time per table: the new part is found as "above the previous maximum".
    const queuedAt = performance.now();
    return this.perTable.run(`${entry.database}.${entry.table}`, () => {
      this.metrics.observeStep(role, 'attach.lock_wait', queuedAt);
      return this.attachLocked(entry, this.store.pathOf(entry.lsn), true, role);
    });
  }

  private dataDirOf(table: TableInfo): Promise<{ path: string; owner: { uid: number; gid: number } }> {
    const key = table.dataPaths.join('\0');
    let found = this.dataDirs.get(key);
    if (!found) {
      found = (async () => {
        const path = await dataPathBeside(table, this.store.partsDir);
        const { uid, gid } = await stat(path);
        return { path, owner: { uid, gid } };
      })();
      this.dataDirs.set(key, found);
      // A failure (no directory on the volume yet) is asked again next time.
      found.catch(() => this.dataDirs.delete(key));
    }
    return found;
  }

  /** Attaches a part from any directory (a clone's download); no LSN of its own. */
  attachCopy(source: string, part: Pick<LogEntry, 'database' | 'table' | 'partitionId' | 'partName' | 'checksumsSha256'>): Promise<number> {
    const entry = { ...part, lsn: 0 } as LogEntry;
    return this.perTable.run(`${part.database}.${part.table}`, () => this.attachLocked(entry, source, false, 'follower'));
  }

  /** Runs `fn` while no attach or drop runs on any of `tables` ("db.t"): what a consistent snapshot needs. */
  async withTablesLocked<T>(tables: string[], fn: () => Promise<T>): Promise<T> {
    const [first, ...rest] = [...tables].sort();
    if (first === undefined) return fn();
    return this.perTable.run(first, () => this.withTablesLocked(rest, fn));
  }

  private async attachLocked(entry: LogEntry, source: string, tracked: boolean, role: StepRole): Promise<number> {
    /** Times a sub-step of the attach; its ClickHouse queries are counted under the same name. */
    const step = <T>(name: string, fn: (label: StepLabel) => T): T => this.metrics.timed(role, name, () => fn({ step: name, role }));
    const table = await this.catalog.resolve(entry.database, entry.table);
    const where = `database = ${quoteString(entry.database)} AND table = ${quoteString(entry.table)}`;
    // An earlier attempt got as far as ATTACH (then the sidecar died, or the answer was lost):
    // the part may be in the table already. Adopt it rather than attach it a second time.
    const priorFloor = tracked ? step('attach.log', () => this.log.attachFloor(entry.lsn)) : null;
    const { path: dataPath, owner } = await step('attach.stat', () => this.dataDirOf(table));
    if (priorFloor !== null) {
      const adopted = await step('attach.adopt', (label) => this.findUnmapped(entry, where, priorFloor, label));
      if (adopted !== undefined) {
        await step('attach.columns', (label) => this.restoreColumns(entry, dataPath, adopted, source, label));
        return adopted;
      }
      // ATTACH is known to have run: attaching again would store the rows twice.
      if (this.log.attachDone(entry.lsn)) {
        throw new ChorusError(
          'ATTACH_FAILED',
          `LSN ${entry.lsn} was attached to ${entry.database}.${entry.table} earlier but its part is not found by content (merged away, or the table changed); it is not attached again, which would store its rows twice`,
        );
      }
    }
    const key = `${entry.database}.${entry.table}`;
    let maxBlock = this.blockFloor.get(key);
    if (maxBlock === undefined) {
      [{ maxBlock } = { maxBlock: 0 }] = await step('attach.max_block', (label) =>
        this.ch.rows<{ maxBlock: number }>(`SELECT max(max_block_number) AS maxBlock FROM system.parts WHERE ${where}`, { step: label }),
      );
    }
    const floor = maxBlock;
    if (tracked) step('attach.log', () => this.log.markAttaching(entry.lsn, floor));
    const linked = await step('attach.link', () => this.store.linkInto(source, join(dataPath, 'detached'), entry.partName, owner));
    try {
      await step('attach.query', (label) => this.ch.exec(`ALTER TABLE ${quoteIdent(entry.database)}.${quoteIdent(entry.table)} ATTACH PART ${quoteString(entry.partName)}`, { step: label }));
    } catch (err) {
      await rm(linked, { recursive: true, force: true });
      throw new ChorusError('ATTACH_FAILED', `ATTACH PART for LSN ${entry.lsn} failed: ${(err as Error).message}`, err);
    }
    if (tracked) step('attach.log', () => this.log.markAttachDone(entry.lsn));
    this.faults.crashPoint('attach.after-attach');
    // ATTACH gives the part the table's next block number, so it is nearly always right above
    // the floor: look there on disk first. A floor from before the table was dropped and
    // re-created would hide the part: then the newest matching block in the partition is it.
    const block = await step(
      'attach.find',
      async (label) =>
        this.findOnDisk(entry, dataPath, floor + 1) ??
        (await this.findAttached(entry, where, floor, 'oldest', label)) ??
        (floor > 0 ? await this.findAttached(entry, where, 0, 'newest', label) : undefined),
    );
    if (block === undefined) {
      this.blockFloor.delete(key);
      throw new ChorusError('ATTACH_FAILED', `LSN ${entry.lsn} was attached but its part was not found by content`);
    }
    this.blockFloor.set(key, block);
    await step('attach.columns', (label) => this.restoreColumns(entry, dataPath, block, source, label));
    return block;
  }

  /**
   * 18.16's ATTACH PART deletes the part's columns.txt and writes it anew, and on a full disk it
   * may leave it empty and still succeed (Dialect.mayLeavePartsIncomplete); at its next start
   * ClickHouse would then delete the part as broken, and its rows with it. The copy attached
   * from still holds the file as it was: it is hardlinked back, which needs no free space.
   * Thrown errors leave the entry to be retried, which adopts the part and comes here again.
   */
  private async restoreColumns(
    entry: Pick<LogEntry, 'lsn' | 'database' | 'table' | 'partitionId' | 'partName'>,
    dataPath: string,
    block: number,
    source: string,
    step?: StepLabel,
  ): Promise<void> {
    if (!this.ch.dialect.mayLeavePartsIncomplete) return;
    const partDir = await this.partDirectory(entry, dataPath, block, step);
    if (partDir === undefined) {
      this.logger.warn({ lsn: entry.lsn, block }, "the part just attached is no longer listed; its columns.txt was not checked");
      return;
    }
    const columns = join(partDir, 'columns.txt');
    if (this.faults.takeEmptyAttachedColumns()) {
      // A new, empty file, as ClickHouse's rewrite leaves it: the copy attached from keeps its own.
      rmSync(columns, { force: true });
      writeFileSync(columns, '');
    }
    // ClickHouse writes the file when it is missing, from the table's columns: nothing to mend.
    if (!existsSync(columns)) return;
    const problem = columnsProblem(partDir);
    if (problem === undefined) return;
    const sourceProblem = columnsProblem(source);
    if (sourceProblem !== undefined) {
      throw new ChorusError('ATTACH_FAILED', `LSN ${entry.lsn}'s part was attached with an incomplete columns.txt (${problem}), and the copy it came from has none to restore (${sourceProblem})`);
    }
    const temp = `${columns}.chorus`;
    try {
      rmSync(temp, { force: true });
      linkSync(join(source, 'columns.txt'), temp);
      renameSync(temp, columns);
      await fsyncPath(partDir);
    } catch (err) {
      throw new ChorusError('ATTACH_FAILED', `LSN ${entry.lsn}'s part was attached with an incomplete columns.txt (${problem}) and could not be restored yet: ${(err as Error).message}`, err);
    }
    this.logger.warn({ lsn: entry.lsn, part: partDir, problem }, "ClickHouse left the attached part's columns.txt incomplete (a full disk?); restored it from the copy attached from");
  }

  /** The directory of the one-block part at `block`: by its usual name, else as ClickHouse lists it (old-style partition names). */
  private async partDirectory(entry: Pick<LogEntry, 'database' | 'table' | 'partitionId' | 'partName'>, dataPath: string, block: number, step?: StepLabel): Promise<string | undefined> {
    const level = parsePartName(entry.partName)?.level ?? 0;
    const usual = join(dataPath, `${entry.partitionId}_${block}_${block}_${level}`);
    if (existsSync(usual)) return usual;
    const [listed] = await this.ch.rows<{ path: string }>(
      `SELECT path FROM system.parts WHERE database = ${quoteString(entry.database)} AND table = ${quoteString(entry.table)} AND partition_id = ${quoteString(entry.partitionId)}
       AND min_block_number = ${block} AND max_block_number = ${block} ORDER BY active DESC LIMIT 1`,
      { step },
    );
    return listed?.path;
  }

  /** Applies a DROP PARTITION or TRUNCATE entry, under the same per-table lock as attaches. */
  applyTableOp(entry: LogEntry): Promise<void> {
    return this.perTable.run(`${entry.database}.${entry.table}`, async () => {
      const table = `${quoteIdent(entry.database)}.${quoteIdent(entry.table)}`;
      const where = `database = ${quoteString(entry.database)} AND table = ${quoteString(entry.table)}`;
      const cleanUp = this.ch.dialect.dropLeavesMergedPartsUncovered;
      // What is on disk before the drop: a part written after it has a higher block number (no
      // attach runs meanwhile: the lock), and one already inactive is no query's any more.
      const before = cleanUp ? await this.ch.rows<{ name: string; max: number; active: number }>(`SELECT name, max_block_number AS max, active FROM system.parts WHERE ${where}`) : [];
      if (entry.kind === 'truncate') await this.ch.exec(`TRUNCATE TABLE ${table}`);
      // Re-read and re-written: whatever the entry carries, only a literal reaches ClickHouse.
      else if (entry.kind === 'drop_partition') await this.ch.exec(`ALTER TABLE ${table} DROP PARTITION ${canonicalPartition(entry.partition)}`);
      else throw new ChorusError('INTERNAL', `LSN ${entry.lsn} is not a table operation`);
      if (cleanUp) await this.removeUncoveredLeftovers(where, before);
    });
  }

  /**
   * Submits a mutation entry's statement under the table's lock: no attach runs meanwhile, so
   * every part attached here before it holds LSNs below it, and ClickHouse gives every part
   * attached after it a higher block number, which the mutation leaves alone. Submitted once:
   * the table's highest block or mutation number is recorded first, and a retry (after a
   * crash, or a lost answer) takes a mutation above it in system.mutations for this one.
   */
  submitMutation(entry: LogEntry): Promise<void> {
    return this.perTable.run(`${entry.database}.${entry.table}`, async () => {
      if (this.log.attachDone(entry.lsn)) return;
      const where = `database = ${quoteString(entry.database)} AND table = ${quoteString(entry.table)}`;
      let floor = this.log.attachFloor(entry.lsn);
      if (floor !== null && (await this.mutationAbove(where, floor))) {
        this.log.markAttachDone(entry.lsn);
        return;
      }
      if (floor === null) {
        const [parts] = await this.ch.rows<{ max: number }>(`SELECT max(max_block_number) AS max FROM system.parts WHERE ${where}`);
        const mutations = await this.mutations(where, 0);
        floor = Math.max(Number(parts?.max ?? 0), ...mutations.map((m) => m.version));
        this.log.markAttaching(entry.lsn, floor);
      }
      // Re-read and re-written: whatever the entry carries, only a canonical mutation of its table reaches ClickHouse.
      const op = parseMutation(entry.statement ?? '');
      if (!op || op.refusal || op.database !== entry.database || op.table !== entry.table) throw new ChorusError('INTERNAL', `LSN ${entry.lsn} does not carry a mutation of its table`);
      await this.ch.request(mutationStatement(op, `${quoteIdent(entry.database)}.${quoteIdent(entry.table)}`), { params: this.ch.dialect.submitMutationSettings });
      this.faults.crashPoint('mutation.after-submit');
      this.log.markAttachDone(entry.lsn);
    });
  }

  /**
   * Runs a schema entry's statement while no attach, drop or mutation runs on the tables it
   * names (for a database's own CREATE or DROP, every replicated table of it), so it falls between
   * the same parts on every replica. Run once: the definitions of those tables (or their absence)
   * are recorded as a hash first, and a retry that finds them changed takes the statement as run.
   */
  async applySchema(entry: LogEntry): Promise<void> {
    const op = parseSchema(entry.statement ?? '');
    if (!op || op.refusal || op.database !== entry.database || op.table !== entry.table) throw new ChorusError('INTERNAL', `LSN ${entry.lsn} does not carry a schema change of its table`);
    const statement = schemaStatement(op, quoteQualified);
    const names = entry.table ? [`${entry.database}.${entry.table}`, ...(op.to ? [`${op.to.database}.${op.to.table}`] : [])] : (await this.catalog.replicated()).filter((t) => t.database === entry.database).map((t) => `${t.database}.${t.name}`);
    await this.withTablesLocked(names, async () => {
      if (this.log.attachDone(entry.lsn)) return;
      const before = await this.schemaState(op);
      const floor = this.log.attachFloor(entry.lsn);
      if (floor === null || floor === before) {
        if (floor === null) this.log.markAttaching(entry.lsn, before);
        try {
          await this.ch.exec(statement);
        } catch (err) {
          // ClickHouse refused it, so it did not run: the next try takes the tables as they are
          // then (an operator may mend them meanwhile), not as a sign that it ran.
          if (err instanceof ClickHouseQueryError) this.log.clearAttaching(entry.lsn);
          throw err;
        }
      }
      this.log.markAttachDone(entry.lsn);
      this.catalog.invalidate();
      for (const name of names) this.blockFloor.delete(name);
    });
  }

  /** A hash (48 bits, an SQLite-safe integer) of the definitions of the tables `op` names, or of its database's tables. */
  private async schemaState(op: SchemaOp): Promise<number> {
    const pairs = [[op.database!, op.table], ...(op.to ? [[op.to.database!, op.to.table]] : [])];
    const where = op.table
      ? pairs.map(([d, t]) => `(database = ${quoteString(d!)} AND name = ${quoteString(t!)})`).join(' OR ')
      : `database = ${quoteString(op.database!)}`;
    const tables = await this.ch.rows<{ database: string; name: string; query: string }>(`SELECT database, name, create_table_query AS query FROM system.tables WHERE ${where} ORDER BY database, name`);
    const databases = await this.ch.rows<{ name: string }>(`SELECT name FROM system.databases WHERE name = ${quoteString(op.database!)}`);
    return parseInt(createHash('sha256').update(JSON.stringify([databases, tables])).digest('hex').slice(0, 12), 16);
  }

  /**
   * Whether ClickHouse has finished the entry's (submitted) mutation, and why not when it says
   * so. A mutation no longer listed finished long enough ago to be cleaned up
   * (finished_mutations_to_keep), or was killed by an operator.
   */
  async mutationProgress(entry: LogEntry): Promise<{ done: boolean; failure?: string }> {
    const where = `database = ${quoteString(entry.database)} AND table = ${quoteString(entry.table)}`;
    const [ours] = await this.mutations(where, this.log.attachFloor(entry.lsn) ?? 0);
    if (!ours) return { done: true };
    return { done: ours.done, ...(ours.failure ? { failure: ours.failure } : {}) };
  }

  private async mutationAbove(where: string, floor: number): Promise<boolean> {
    return (await this.mutations(where, floor)).length > 0;
  }

  /** The table's mutations numbered above `floor`, oldest first. */
  private async mutations(where: string, floor: number): Promise<Array<{ version: number; done: boolean; failure: string }>> {
    const rows = await this.ch.rows<{ id: string; done: number; failure: string }>(
      `SELECT mutation_id AS id, is_done AS done, ${this.ch.dialect.mutationFailReason} AS failure FROM system.mutations WHERE ${where}`,
    );
    return rows
      .map((r) => ({ version: Number(/(\d+)/.exec(r.id)?.[1] ?? 0), done: Number(r.done) === 1, failure: r.failure }))
      .filter((m) => m.version > floor)
      .sort((a, b) => a.version - b.version);
  }

  /**
   * Makes a drop survive a crash of ClickHouse where the release needs it
   * (Dialect.dropLeavesMergedPartsUncovered). 18.16 keeps the parts a merge replaced on disk for
   * old_parts_lifetime (8 minutes); once a drop removed the merged part covering them, a restart
   * loads them again as if never dropped. So every part of the table that was inactive before
   * the drop and that no active part covers now is removed; on 18.16 such a part is dead data
   * whatever dropped its cover (a drop, a truncate, an earlier try of this entry that died
   * before cleaning up). ClickHouse ignores a part gone when it cleans up.
   */
  private async removeUncoveredLeftovers(where: string, before: Array<{ name: string; max: number; active: number }>): Promise<void> {
    const highestBlock = before.reduce((m, p) => Math.max(m, Number(p.max)), 0);
    const inactiveBefore = new Set(before.filter((p) => Number(p.active) !== 1).map((p) => p.name));
    if (inactiveBefore.size === 0) return;
    const parts = await this.ch.rows<{ name: string; partitionId: string; min: number; max: number; path: string; active: number }>(
      `SELECT name, partition_id AS partitionId, min_block_number AS min, max_block_number AS max, path, active FROM system.parts WHERE ${where}`,
    );
    const active = parts.filter((p) => Number(p.active) === 1);
    for (const p of parts) {
      if (!inactiveBefore.has(p.name) || Number(p.active) === 1 || Number(p.max) > highestBlock) continue;
      const covered = active.some((a) => a.partitionId === p.partitionId && Number(a.min) <= Number(p.min) && Number(a.max) >= Number(p.max));
      if (!covered) await rm(p.path, { recursive: true, force: true });
    }
  }

  /**
   * A part with the entry's content, made of one block above `floor` and not mapped to any
   * LSN here: what an interrupted attach of this entry left. Parts merged away since stay
   * listed (inactive) for ClickHouse's old_parts_lifetime, 8 minutes by default.
   */
  private async findUnmapped(entry: LogEntry, where: string, floor: number, step?: StepLabel): Promise<number | undefined> {
    const candidates = await this.ch.rows<{ path: string; block: number }>(
      `SELECT path, min_block_number AS block FROM system.parts WHERE ${where} AND partition_id = ${quoteString(entry.partitionId)}
       AND min_block_number = max_block_number AND min_block_number > ${floor} ORDER BY min_block_number`,
      { step },
    );
    for (const c of candidates) {
      if (this.log.isBlockMapped(entry.database, entry.table, c.block)) continue;
      if ((await this.checksumsHash(c.path)) === entry.checksumsSha256) return c.block;
    }
    return undefined;
  }

  /**
   * The hash of a candidate part's checksums.txt; undefined when ClickHouse removed the part
   * between the query and the read. Any other read error is thrown: a part that could not be
   * read may be the one looked for, and taking it for absent would attach it a second time.
   */
  private async checksumsHash(partPath: string): Promise<string | undefined> {
    const path = join(partPath, 'checksums.txt');
    try {
      if (this.faults.takeUnreadablePart()) throw Object.assign(new Error(`EIO: i/o error (test fault), open '${path}'`), { code: 'EIO' });
      return await sha256File(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new ChorusError('ATTACH_FAILED', `cannot read ${path} to recognise an attached part: ${(err as Error).message}`, err);
    }
  }

  /** The part at `block`, if its directory is there and its checksums.txt is the entry's. */
  private findOnDisk(entry: LogEntry, dataPath: string, block: number): number | undefined {
    const level = parsePartName(entry.partName)?.level ?? 0;
    // A part this fast path cannot read is looked for again, with errors reported, by findAttached.
    if (this.faults.takeUnreadablePart()) return undefined;
    try {
      const checksums = readFileSync(join(dataPath, `${entry.partitionId}_${block}_${block}_${level}`, 'checksums.txt'));
      return createHash('sha256').update(checksums).digest('hex') === entry.checksumsSha256 ? block : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Among the parts of the entry's partition made of one new block above `maxBlock` (active or
   * already merged away), the one whose checksums.txt hashes to the entry's.
   */
  async findAttached(entry: LogEntry, where: string, maxBlock: number, order: 'oldest' | 'newest' = 'oldest', step?: StepLabel): Promise<number | undefined> {
    const candidates = await this.ch.rows<{ path: string; block: number }>(
      `SELECT path, min_block_number AS block FROM system.parts WHERE ${where} AND partition_id = ${quoteString(entry.partitionId)}
       AND min_block_number = max_block_number AND min_block_number > ${maxBlock} ORDER BY min_block_number ${order === 'newest' ? 'DESC' : 'ASC'}`,
      { step },
    );
    for (const c of candidates) {
      if ((await this.checksumsHash(c.path)) === entry.checksumsSha256) return c.block;
    }
    return undefined;
  }
}

/**
 * The table's data directory on the filesystem of `partsDir` (the part store): the one whose
 * detached/ a hardlink can reach. A table on several local disks has one per disk, and ATTACH
 * PART looks in the detached/ of every disk of the table.
 */
export async function dataPathBeside(table: TableInfo, partsDir: string): Promise<string> {
  const storeDev = (await stat(partsDir)).dev;
  for (const path of table.dataPaths) {
    try {
      if ((await stat(path)).dev === storeDev) return path;
    } catch {
      // a disk directory that does not exist yet
    }
  }
  throw new ChorusError(
    'FILESYSTEM_MISMATCH',
    `no data directory of ${table.database}.${table.name} (${table.dataPaths.join(', ')}) is on the filesystem of the part store ${partsDir}; hardlinks need one volume`,
  );
}
