import type { Readable } from 'node:stream';
import { newNonce } from '../allocator/allocator.js';
import type { Allocation, AllocationRequest } from '../allocator/window.js';
import type { Attacher } from '../clickhouse/attach.js';
import type { TableCatalog, TableInfo } from '../clickhouse/catalog.js';
import { ClickHouseQueryError, isServerSideFailure, type ClickHouseHttp } from '../clickhouse/http.js';
import { sleep } from '../core/async.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Faults } from '../faults/faults.js';
import { partlessEntry, type EntryDraft, type EntryState, type LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import { incompletePart } from '../parts/completeness.js';
import type { PartStore } from '../parts/store.js';
import { barrierMarker } from '../allocator/window.js';
import { blockIdOf, STAGING_DATABASE, type StagingPool, type StagingTable } from './staging.js';
import { canonicalPartition } from '../clickhouse/partition.js';
import type { LogConflict } from '../log/store.js';
import type { LeaseAllocation, Leases } from '../allocator/lease.js';
import { ZooKeeperAwayError } from '../allocator/allocator.js';
import { quoteIdent, quoteQualified, quoteString } from '../clickhouse/http.js';
import { mutationStatement, parseSchema, schemaStatement, type MutationOp, type SchemaOp } from './parse.js';
import { checkCreateQuery } from '../clickhouse/catalog.js';

/**
 * The origin records only its own entries: an LSN it was allocated that already holds another
 * entry (forged, or a broken allocator) is an alarm, and the insert is not acknowledged.
 */
function assertOwnEntries(conflicts: LogConflict[], what = 'this insert'): void {
  if (conflicts.length === 0) return;
  throw new ChorusError(
    'LOG_CONFLICT',
    `LSN ${conflicts.map((c) => c.lsn).join(', ')} allocated to ${what} already holds another entry (from ${conflicts.map((c) => c.stored.origin).join(', ')}); nothing is acknowledged, see the alarms of chorus status`,
  );
}

export interface InsertRequest {
  database: string;
  table: string;
  /** The statement with its table reference replaced by the staging table. */
  buildQuery(stagingQualified: string): string;
  body: Readable;
  /** ClickHouse settings and format options to pass on to the staging insert. */
  params: Record<string, string>;
  headers: Record<string, string>;
  dedupToken?: string;
  /** Set by the HTTP layer when the client's body ended early: nothing may be committed then. */
  bodyFailure(): ChorusError | undefined;
  /** Aborted when the client went away: stops its staging insert (never anything after the intent). */
  signal?: AbortSignal;
}

export interface MutationRequest {
  op: MutationOp;
  /** The database of the table (the statement's own, or the request's default). */
  database: string;
  /** mutations_sync: 0 answers once recorded, 1 once done here, 2 once done on every live replica. */
  sync: 0 | 1 | 2;
  /** mutations_sync=2: waits until every live replica has finished the mutation at `lsn`. */
  waitEverywhere: (lsn: number) => Promise<void>;
  signal?: AbortSignal;
}

export interface SchemaRequest {
  /** Every name qualified with its database. */
  op: SchemaOp;
  /** Waits until every live replica has applied the entry at `lsn`. */
  waitEverywhere: (lsn: number) => Promise<void>;
  /** How long it waits to be applied here (distributed_ddl_task_timeout). */
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface InsertResult {
  lsns: number[];
  /** Blocks that were already in the dedup window (stored once, under their first LSN). */
  deduplicated: number;
  blocks: number;
  rows: number;
  /** Bytes of the new parts on disk (deduplicated blocks count nothing). */
  bytes: number;
}

export interface InsertDeps {
  self: string;
  ch: ClickHouseHttp;
  catalog: TableCatalog;
  staging: StagingPool;
  store: PartStore;
  log: LocalLog;
  attacher: Attacher;
  allocate: (request: AllocationRequest) => Promise<Allocation[]>;
  /** Inserts allocate through it: ZooKeeper while it is there, the replica's lease while it is away. */
  leases: Leases;
  announce: (entries: LogEntry[]) => void;
  hold: (lsns: number[]) => () => void;
  notifyApplier: () => void;
  /** Voids LSNs this replica allocated and could not record. */
  voidLsns: (lsns: number[]) => Promise<void>;
  /** Nonces of allocations in progress here, which recovery must leave alone. */
  inFlight: Set<string>;
  faults: Faults;
  metrics: Metrics;
  logger: Logger;
  /** How long a duplicate waits for the entry of the LSN it duplicates to become known here. */
  duplicateWaitMs: number;
  /** The databases Chorus replicates (clickhouse.databases). */
  databases: string[];
}

/**
 * One insert on its origin replica: stage the rows in ClickHouse, copy each staged part under
 * pending/, record the intent, allocate LSNs (or learn they are duplicates), record the
 * entries, attach locally, and only then answer. Peers are told at once and fetch the parts.
 * A crash at any step is recovered at start-up (see Recovery).
 */
export class InsertPipeline {
  /** Inserts and table operations running now; shutdown waits for them. */
  inFlight = 0;

  constructor(private readonly deps: InsertDeps) {}

  private async counted<T>(fn: () => Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await fn();
    } finally {
      this.inFlight--;
    }
  }

  insert(req: InsertRequest): Promise<InsertResult> {
    return this.counted(() => this.deps.metrics.timed('origin', 'total', () => this.insertCounted(req)));
  }

  private async insertCounted(req: InsertRequest): Promise<InsertResult> {
    const { ch, catalog, staging, store, log, attacher, metrics, faults } = this.deps;
    /** Times one step of this insert (see chorus_insert_step_seconds). */
    const step = <T>(name: string, fn: () => T): T => metrics.timed('origin', name, fn);
    // Read before the table's definition: every schema change at or below it is in what is staged.
    const schemaSettled = log.schemaSettledThrough(req.database, req.table);
    const table = await step('catalog', () => catalog.resolve(req.database, req.table));
    const label = `${table.database}.${table.name}`;
    const stage = await step('staging.acquire', () => this.acquireStage(table, label));
    const nonce = newNonce();
    const drafts: EntryDraft[] = [];
    // Once the intent is recorded and until it is resolved, its pending copies belong to
    // recovery: the allocation may have landed even when the call failed.
    let intentOpen = false;
    // Whether the staging INSERT may still run in ClickHouse: true until ClickHouse answered it.
    // A request cut on our side (the client went away, its body ended early) leaves the query
    // running there, and it may still write a part into the staging table after we empty it.
    let stagingMayRun = true;
    try {
      try {
        await step('staging.insert', () =>
          ch.request(req.buildQuery(stage.qualified), {
            body: req.body,
            params: { ...req.params, ...ch.dialect.stagingSettings },
            headers: req.headers,
            signal: req.signal,
            step: { step: 'staging.insert', role: 'origin' },
          }),
        );
        stagingMayRun = false;
      } catch (err) {
        if (err instanceof ClickHouseQueryError) stagingMayRun = false;
        const bodyFailure = req.bodyFailure();
        if (bodyFailure) throw bodyFailure;
        const refusedForItsState = cannotStoreNow(err, label);
        if (refusedForItsState) throw refusedForItsState;
        if (err instanceof ClickHouseQueryError) {
          throw new ChorusError('BAD_DATA', `ClickHouse refused the rows for ${label}: ${err.message}`, err);
        }
        throw err;
      }
      const bodyFailure = req.bodyFailure();
      if (bodyFailure) throw bodyFailure;

      const perPartition = new Map<string, number>();
      for (const [i, part] of (await step('staging.parts', () => stage.parts())).entries()) {
        const { tempDir, files } = await step('link', () => store.linkFrom(part.path, store.pendingPath(nonce, i)));
        // 18.16 can answer a staging INSERT on a full disk with a part it could not finish writing:
        // recorded, it could be attached nowhere, and a retry with its token would be acknowledged
        // as its duplicate. Refused here, before the intent, it stores nothing.
        const incomplete = ch.dialect.mayLeavePartsIncomplete ? step('incomplete_check', () => incompletePart(tempDir, files)) : undefined;
        if (incomplete) {
          throw new ChorusError('CLICKHOUSE_CANNOT_STORE', `ClickHouse accepted the rows for ${label} but could not finish writing their part ${part.name} (${incomplete}; a full disk?): nothing was stored; retry later`);
        }
        const checksums = files.find((f) => f.name === 'checksums.txt');
        if (!checksums) throw new ChorusError('INTERNAL', `staged part ${part.name} has no checksums.txt`);
        const index = perPartition.get(part.partitionId) ?? 0;
        perPartition.set(part.partitionId, index + 1);
        const token = req.dedupToken !== undefined ? { value: req.dedupToken, index } : undefined;
        drafts.push({
          dir: tempDir,
          entry: {
            kind: 'insert',
            database: table.database,
            table: table.name,
            partitionId: part.partitionId,
            blockId: blockIdOf(table, part.partitionId, checksums.sha256, token),
            partName: part.name,
            checksumsSha256: checksums.sha256,
            rows: Number(part.rows),
            bytes: files.reduce((sum, f) => sum + f.size, 0),
            files,
            origin: this.deps.self,
            partition: '',
          },
        });
      }
      if (drafts.length === 0) return { lsns: [], deduplicated: 0, blocks: 0, rows: 0, bytes: 0 };

      this.deps.inFlight.add(nonce);
      step('log.intent', () => log.recordIntent(nonce, drafts));
      intentOpen = true;
      const allocations: LeaseAllocation[] = await step('allocate', () =>
        this.deps.leases.allocateInsert(
          {
            nonce,
            origin: this.deps.self,
            blockIds: drafts.map((d) => d.entry.blockId),
            tables: drafts.map(() => label),
          },
          { database: table.database, table: table.name },
        ),
      );
      faults.crashPoint('insert.after-allocate');
      const allocatedAtMs = Date.now();
      const fresh: LogEntry[] = [];
      const duplicates: Array<{ lsn: number; blockId: string }> = [];
      for (const [i, d] of drafts.entries()) {
        const allocation = allocations[i]!;
        if (allocation.duplicate) {
          duplicates.push({ lsn: allocation.lsn, blockId: d.entry.blockId });
          metrics.dedupHits.inc({ table: label });
        } else {
          fresh.push({ ...d.entry, lsn: allocation.lsn, allocatedAtMs, barrier: allocation.barrier, ...(allocation.leased ? { leased: true } : {}) });
        }
      }
      try {
        await this.assertStagedSchema(label, table.database, table.name, schemaSettled, fresh);
        for (const [i, d] of drafts.entries()) if (!allocations[i]!.duplicate) await step('commit', () => store.commit(d.dir, allocations[i]!.lsn));
        const { conflicts } = step('log.resolve', () => log.resolveIntent(nonce, fresh));
        intentOpen = false;
        assertOwnEntries(conflicts);
      } catch (err) {
        // Allocated but not recorded: this replica allocated them, so it may void them.
        this.deps.leases.voidLeased(fresh.filter((e) => e.leased).map((e) => e.lsn));
        await this.deps.voidLsns(fresh.filter((e) => !e.leased).map((e) => e.lsn)).catch((voidErr: unknown) => this.deps.logger.error({ err: voidErr }, 'voiding failed; recovery will retry'));
        throw err;
      }
      faults.crashPoint('insert.after-record');
      const release = this.deps.hold(fresh.map((e) => e.lsn));
      try {
        // Durable and allocated: peers may apply it now, even if attaching here fails below
        // (the applier then retries it here, and the client's retry is answered as a duplicate).
        step('announce', () => this.deps.announce(fresh));
        for (const entry of fresh) {
          try {
            await this.awaitUnblocked(entry);
            const block = await step('attach', () => attacher.attach(entry, 'origin'));
            step('log.applied', () => log.markApplied(entry, block));
          } catch (err) {
            const e = ChorusError.from(err);
            throw new ChorusError(
              e.code === 'CLICKHOUSE_UNAVAILABLE' ? 'CLICKHOUSE_UNAVAILABLE' : 'ATTACH_FAILED',
              `the insert is recorded as LSN ${entry.lsn} and every replica will apply it, but it could not be attached here yet (${e.message}); sending it again is safe: it is deduplicated`,
              err,
            );
          }
        }
      } finally {
        release();
      }
      await this.awaitOriginals(duplicates);
      metrics.insertedRows.inc({ table: label }, fresh.reduce((sum, e) => sum + e.rows, 0));
      return {
        lsns: allocations.map((a) => a.lsn),
        deduplicated: duplicates.length,
        blocks: drafts.length,
        rows: fresh.reduce((s, e) => s + e.rows, 0),
        bytes: fresh.reduce((s, e) => s + e.bytes, 0),
      };
    } finally {
      this.deps.inFlight.delete(nonce);
      this.deps.leases.done(nonce);
      if (!intentOpen) void store.discardPending(nonce).catch(() => undefined);
      // Emptying the staging table need not delay the answer: the pool hands it out again
      // only once it is empty.
      void step('staging.release', () => staging.release(table, stage, { mayStillRun: stagingMayRun })).catch((err: unknown) => this.deps.logger.warn({ err }, 'could not empty a staging table'));
    }
  }

  /**
   * A part staged before a schema change of its table, with an LSN above that change, would not
   * fit the table where every replica attaches it: the insert is refused before its entries are
   * recorded (its LSNs are voided) as retryable. Only looked into when an operation on the table
   * was allocated between what this replica had applied when staging and the insert's LSNs.
   */
  private async assertStagedSchema(label: string, database: string, table: string, settledThrough: number, fresh: LogEntry[]): Promise<void> {
    const barrier = Math.max(0, ...fresh.map((e) => e.barrier));
    if (fresh.length === 0 || barrier <= settledThrough) return;
    const { log } = this.deps;
    const deadline = Date.now() + this.deps.duplicateWaitMs;
    while (log.watermarks().known < barrier) {
      if (Date.now() > deadline) throw new ChorusError('ORDERING_PENDING', `an operation on ${label} (LSN ${barrier}) came before this insert and has not reached this replica yet; nothing was stored: send it again`);
      await sleep(10);
    }
    const changes = log.schemaChangesBetween(database, table, settledThrough, Math.max(...fresh.map((e) => e.lsn)));
    if (changes.length > 0) {
      this.deps.catalog.invalidate();
      throw new ChorusError('SCHEMA_CHANGED', `${label} changed (LSN ${changes.join(', ')}) while this insert's rows were being staged; nothing was stored: send it again`);
    }
  }

  /** A staging table of `table`'s structure; ClickHouse refusing to make one for its own state is CLICKHOUSE_CANNOT_STORE. */
  private acquireStage(table: TableInfo, label: string): Promise<StagingTable> {
    return this.deps.staging.acquire(table).catch((err: unknown) => {
      throw cannotStoreNow(err, label) ?? err;
    });
  }

  /** Whether Chorus replicates this table (otherwise statements on it go to ClickHouse as they are). */
  async replicates(database: string, table: string): Promise<boolean> {
    try {
      await this.deps.catalog.resolve(database, table);
      return true;
    } catch (err) {
      const e = ChorusError.from(err);
      if (e.code === 'UNKNOWN_TABLE' || e.code === 'NOT_REPLICATED_TABLE') return false;
      throw err;
    }
  }

  /** Waits (bounded) until nothing orders before `entry`: a drop of its table with a lower LSN. */
  private async awaitUnblocked(entry: LogEntry): Promise<void> {
    if (this.deps.faults.orderingIgnored) return;
    const deadline = Date.now() + this.deps.duplicateWaitMs;
    for (let reason = this.deps.log.blockedBy(entry); reason; reason = this.deps.log.blockedBy(entry)) {
      if (Date.now() > deadline) throw new ChorusError('ORDERING_PENDING', reason);
      await sleep(10);
    }
  }

  /**
   * DROP PARTITION and TRUNCATE become log entries: allocated, recorded, and applied on every
   * replica in LSN order relative to the table's inserts. Answered once applied here.
   */
  tableOp(op: { kind: 'drop_partition' | 'truncate'; database: string; table: string; partition: string }): Promise<number> {
    return this.counted(() => this.tableOpCounted(op));
  }

  private async tableOpCounted(op: { kind: 'drop_partition' | 'truncate'; database: string; table: string; partition: string }): Promise<number> {
    const { catalog, staging, log } = this.deps;
    const table = await catalog.resolve(op.database, op.table);
    const label = `${table.database}.${table.name}`;
    // Every replica splices the partition into SQL: only a literal in canonical form is checked,
    // recorded and sent (followers refuse any other form).
    const partition = op.kind === 'drop_partition' ? canonicalPartition(op.partition) : '';
    if (op.kind === 'drop_partition') {
      // The expression is checked on an (empty) staging table of the same structure first:
      // a bad one is refused before any LSN is allocated.
      const stage = await this.acquireStage(table, label);
      try {
        await this.deps.ch.exec(`ALTER TABLE ${stage.qualified} DROP PARTITION ${partition}`);
      } catch (err) {
        // Only ClickHouse's verdict on the expression is the client's fault; its own state or
        // an unreachable server is not, and says so with its own code.
        if (!(err instanceof ClickHouseQueryError)) throw err;
        throw cannotStoreNow(err, label, `check the partition expression on a staging table of ${label}`) ?? new ChorusError('BAD_QUERY', `bad partition expression for ${label}: ${err.message}`, err);
      } finally {
        void staging.release(table, stage).catch(() => undefined);
      }
    }
    const entry = await this.recordPartless(
      partlessEntry(op.kind, this.deps.self, { database: table.database, table: table.name, blockId: barrierMarker(label), partition }),
      { table: label, state: 'pending', what: `this ${op.kind === 'truncate' ? 'TRUNCATE' : 'DROP PARTITION'}` },
    );
    this.deps.announce([entry]);
    this.deps.notifyApplier();
    const deadline = Date.now() + this.deps.duplicateWaitMs * 2;
    while (log.get(entry.lsn)?.state !== 'applied') {
      if (Date.now() > deadline) {
        throw new ChorusError('ORDERING_PENDING', `recorded as LSN ${entry.lsn}; every replica applies it after the entries before it, which have not all reached this replica yet (${log.blockedBy(entry) ?? 'applying'})`);
      }
      await sleep(10);
    }
    return entry.lsn;
  }

  /**
   * A mutation becomes a log entry: checked on an empty staging table of the table's structure
   * (a statement ClickHouse refuses allocates nothing), allocated with a barrier, recorded, and
   * run by every replica after the table's entries below it. Answered once recorded
   * (`mutations_sync=0`, ClickHouse's own default), once done here (1), or once done on every
   * live replica (2, waited for through `waitEverywhere`).
   */
  mutation(req: MutationRequest): Promise<number> {
    return this.counted(() => this.mutationCounted(req));
  }

  private async mutationCounted(req: MutationRequest): Promise<number> {
    const { catalog, staging, log, ch } = this.deps;
    const table = await catalog.resolve(req.database, req.op.table);
    const label = `${table.database}.${table.name}`;
    if (req.op.lightweight && !ch.dialect.hasLightweightDelete) {
      throw new ChorusError('UNSUPPORTED_BY_CLICKHOUSE', `ClickHouse ${ch.dialect.version} has no lightweight DELETE FROM (23.3 and later have it): use ALTER TABLE ${label} DELETE WHERE ...`);
    }
    const stage = await this.acquireStage(table, label);
    try {
      await ch.request(mutationStatement(req.op, stage.qualified), { params: ch.dialect.submitMutationSettings });
    } catch (err) {
      if (!(err instanceof ClickHouseQueryError)) throw err;
      throw cannotStoreNow(err, label, `check the mutation on a staging table of ${label}`) ?? new ChorusError('BAD_QUERY', `ClickHouse refused the mutation of ${label}: ${err.message}`, err);
    } finally {
      void staging.release(table, stage).catch(() => undefined);
    }
    const statement = mutationStatement(req.op, `${quoteIdent(table.database)}.${quoteIdent(table.name)}`);
    const entry = await this.recordStatement(partlessEntry('mutation', this.deps.self, { database: table.database, table: table.name, blockId: barrierMarker(label), statement }), label, 'mutation');
    this.deps.announce([entry]);
    this.deps.notifyApplier();
    if (req.sync === 0) return entry.lsn;
    for (;;) {
      const state = log.get(entry.lsn)?.state;
      if (state === 'applied') break;
      const failure = log.lastError(entry.lsn);
      if (failure?.startsWith('MUTATION_FAILED')) {
        throw new ChorusError('MUTATION_FAILED', `the mutation is recorded as LSN ${entry.lsn} and runs on every replica, but ClickHouse reports here: ${failure.replace(/^MUTATION_FAILED: /, '')}; do not send it again`);
      }
      if (req.signal?.aborted) throw ChorusError.from(req.signal.reason);
      await sleep(50);
    }
    if (req.sync === 2) await req.waitEverywhere(entry.lsn);
    return entry.lsn;
  }

  /**
   * Records a mutation or schema change, which must not run twice: a failure that may have
   * allocated it anyway (the ZooKeeper write's outcome is unknown) is not answered as retryable.
   * If it landed, recovery records it and every replica runs it.
   */
  private async recordStatement(draft: EntryDraft['entry'], label: string, what: string): Promise<LogEntry> {
    try {
      return await this.recordPartless(draft, { table: draft.blockId ? label : undefined, state: 'pending', what: `this ${what}` });
    } catch (err) {
      // A refusal that proves nothing was allocated may be sent again.
      const e = ChorusError.from(err);
      if (err instanceof ZooKeeperAwayError || e.code === 'LOG_CONFLICT') throw err;
      throw new ChorusError(
        'STATEMENT_OUTCOME_UNKNOWN',
        `whether the ${what} of ${label} was recorded is unknown (${e.message}); if it was, every replica runs it. Look for it with chorus entries before sending it again: sent twice, it runs twice`,
        err,
      );
    }
  }

  /**
   * A schema change becomes a log entry: checked first on a scratch table in Chorus's own
   * database (a statement ClickHouse refuses allocates nothing), recorded with a barrier on its
   * table, run by every replica in LSN order against the table's inserts, and answered once
   * every live replica has run it (as ON CLUSTER answers). A CREATE TABLE is recorded as
   * ClickHouse wrote the scratch table's definition, so every replica creates the same table.
   * Returns 0 when there was nothing to do (IF [NOT] EXISTS).
   */
  schemaChange(req: SchemaRequest): Promise<number> {
    return this.counted(() => this.schemaChangeCounted(req));
  }

  private async schemaChangeCounted(req: SchemaRequest): Promise<number> {
    const { ch, catalog, log } = this.deps;
    const op = req.op;
    const db = op.database!;
    const label = op.table ? `${db}.${op.table}` : db;
    const exists = async (database: string, table?: string) =>
      table === undefined
        ? (await ch.rows<{ n: number }>(`SELECT count() AS n FROM system.databases WHERE name = ${quoteString(database)}`))[0]!.n > 0
        : (await ch.rows<{ n: number }>(`SELECT count() AS n FROM system.tables WHERE database = ${quoteString(database)} AND name = ${quoteString(table)}`))[0]!.n > 0;
    /** ClickHouse's verdict on the statement run against a scratch table of the same definition. */
    const onScratch = async (create: (qualified: string) => string, then?: (qualified: string) => string): Promise<string> => {
      const qualified = `${quoteIdent(STAGING_DATABASE)}.${quoteIdent(`ddl_${newNonce().replace(/[^0-9a-f]/g, '').slice(0, 16)}`)}`;
      try {
        await ch.exec(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(STAGING_DATABASE)}`);
        await ch.exec(create(qualified));
        if (then) await ch.exec(then(qualified));
        const [row] = await ch.rows<{ query: string }>(`SELECT create_table_query AS query FROM system.tables WHERE database = ${quoteString(STAGING_DATABASE)} AND name = ${quoteString(qualified.split('.')[1]!.replace(/`/g, ''))}`);
        return row!.query;
      } catch (err) {
        if (!(err instanceof ClickHouseQueryError)) throw err;
        throw cannotStoreNow(err, label, `check the statement on a scratch table of ${label}`) ?? new ChorusError('BAD_QUERY', `ClickHouse refused the statement for ${label}: ${err.message}`, err);
      } finally {
        await ch.exec(`DROP TABLE IF EXISTS ${qualified}`).catch(() => undefined);
      }
    };
    let statement: string;
    switch (op.action) {
      case 'create_database':
      case 'drop_database': {
        const there = await exists(db);
        if (there === (op.action === 'create_database')) {
          if (op.ifExists) return 0;
          throw new ChorusError(there ? 'BAD_QUERY' : 'UNKNOWN_TABLE', `database ${db} ${there ? 'already exists' : 'does not exist'}`);
        }
        statement = schemaStatement(op, quoteQualified);
        break;
      }
      case 'create_table': {
        if (await exists(db, op.table)) {
          if (op.ifExists) return 0;
          throw new ChorusError('BAD_QUERY', `table ${label} already exists`);
        }
        if (!(await exists(db))) throw new ChorusError('UNKNOWN_TABLE', `database ${db} does not exist`);
        const created = await onScratch((q) => `CREATE TABLE ${q}${op.asTable ? ` AS ${quoteQualified(op.asTable.database, op.asTable.table)}` : ''}${op.rest ? ` ${op.rest}` : ''}`);
        const written = parseSchema(created.replace(/^CREATE TABLE \S+/, `CREATE TABLE IF NOT EXISTS ${quoteQualified(db, op.table)}`));
        if (!written || written.action !== 'create_table' || written.refusal) throw new ChorusError('INTERNAL', `could not read back the definition ClickHouse wrote for ${label}`);
        statement = schemaStatement(written, quoteQualified);
        try {
          checkCreateQuery({ database: db, table: op.table, createQuery: statement.replace(/^CREATE TABLE IF NOT EXISTS /, 'CREATE TABLE ') });
        } catch {
          throw new ChorusError('NOT_REPLICATED_STATEMENT', `${label} would not be a plain MergeTree-family table, which is all Chorus replicates; create it on each replica's ClickHouse if it is meant to stay local`);
        }
        break;
      }
      case 'drop_table':
        if (!(await this.replicates(db, op.table))) {
          if (op.ifExists) return 0;
          throw new ChorusError('UNKNOWN_TABLE', `table ${label} does not exist`);
        }
        statement = schemaStatement(op, quoteQualified);
        break;
      case 'rename_table': {
        await catalog.resolve(db, op.table);
        const to = op.to!;
        if (!catalog.coversDatabase(to.database!)) throw new ChorusError('NOT_REPLICATED_STATEMENT', `${to.database} is not a database Chorus replicates: a replicated table is renamed within ${this.deps.databases.join(', ')} only`);
        if (await exists(to.database!, to.table)) throw new ChorusError('BAD_QUERY', `table ${to.database}.${to.table} already exists`);
        if (!(await exists(to.database!))) throw new ChorusError('UNKNOWN_TABLE', `database ${to.database} does not exist`);
        statement = schemaStatement(op, quoteQualified);
        break;
      }
      case 'alter_table':
        await catalog.resolve(db, op.table);
        await onScratch(
          (q) => `CREATE TABLE ${q} AS ${quoteQualified(db, op.table)}`,
          (q) => `ALTER TABLE ${q} ${op.rest}`,
        );
        statement = schemaStatement(op, quoteQualified);
        break;
    }
    const entry = await this.recordStatement(partlessEntry('schema', this.deps.self, { database: db, table: op.table, blockId: op.table ? barrierMarker(label) : '', statement }), label, 'schema change');
    this.deps.announce([entry]);
    this.deps.notifyApplier();
    // Here first, where a failure can be told; then on every other live replica.
    const deadline = Date.now() + req.timeoutMs;
    for (;;) {
      if (log.get(entry.lsn)?.state === 'applied') break;
      const failure = log.lastError(entry.lsn);
      if (failure) throw new ChorusError('SCHEMA_FAILED', `the schema change is recorded as LSN ${entry.lsn} and is applied on every replica in order, but failed here (it is retried): ${failure}; do not send it again`);
      if (Date.now() > deadline) {
        throw new ChorusError('SCHEMA_TIMEOUT', `the schema change is recorded as LSN ${entry.lsn} but not applied here within ${req.timeoutMs} ms (${log.blockedBy(entry) ?? 'applying'}); it is applied on every replica in order: do not send it again`);
      }
      if (req.signal?.aborted) throw ChorusError.from(req.signal.reason);
      await sleep(20);
    }
    await req.waitEverywhere(entry.lsn);
    return entry.lsn;
  }

  /**
   * Allocates an LSN for an entry without a part (a drop, a truncate, a decommission) and records
   * it, under an intent as inserts are: a crash between allocating and recording is finished by
   * recovery. Throws LOG_CONFLICT when the LSN already holds someone else's entry.
   */
  async recordPartless(draft: EntryDraft['entry'], opts: { table?: string; state?: EntryState; what: string }): Promise<LogEntry> {
    const nonce = newNonce();
    const blockId = draft.blockId || null;
    this.deps.inFlight.add(nonce);
    try {
      this.deps.log.recordIntent(nonce, [{ dir: '', entry: draft }]);
      const [allocation] = await this.deps.allocate({
        nonce,
        origin: this.deps.self,
        blockIds: [blockId],
        tables: opts.table ? [opts.table] : undefined,
        reserve: draft.kind === 'lease' ? draft.leaseSize : undefined,
      });
      const entry: LogEntry = { ...draft, lsn: allocation!.lsn, allocatedAtMs: Date.now(), barrier: 0 };
      assertOwnEntries(this.deps.log.resolveIntent(nonce, [entry], opts.state).conflicts, opts.what);
      return entry;
    } finally {
      this.deps.inFlight.delete(nonce);
    }
  }

  /**
   * A duplicate is acknowledged only once the entry it duplicates is known here: until then
   * its origin might still void it (it crashed between allocating and recording), and an
   * acknowledged insert must never be lost. Its block ID must be this block's: the window keeps
   * only 64 bits of a hash.
   */
  private async awaitOriginals(duplicates: Array<{ lsn: number; blockId: string }>): Promise<void> {
    const deadline = Date.now() + this.deps.duplicateWaitMs;
    for (const { lsn, blockId } of duplicates) {
      for (;;) {
        const original = this.deps.log.get(lsn);
        if (original?.state === 'voided') {
          throw new ChorusError('DUPLICATE_OF_VOIDED', `this block duplicates LSN ${lsn}, which its origin voided; send the insert again`);
        }
        if (original && original.entry.blockId !== blockId) {
          throw new ChorusError('DEDUP_HASH_COLLISION', `this block's ID (${blockId}) hashes like that of LSN ${lsn} (${original.entry.blockId}) in the dedup window; nothing was stored: send it with an insert_deduplication_token`);
        }
        if (original) break;
        if (Date.now() > deadline) {
          throw new ChorusError('DUPLICATE_PENDING', `this block duplicates LSN ${lsn}, whose entry has not reached this replica yet; send the insert again later`);
        }
        await sleep(20);
      }
    }
  }
}

/** ClickHouse refused a step of staging for its own state (disk full...): the client's request is not at fault. */
function cannotStoreNow(err: unknown, label: string, step = `store the rows for ${label}`): ChorusError | undefined {
  if (!(err instanceof ClickHouseQueryError) || !isServerSideFailure(err)) return undefined;
  return new ChorusError('CLICKHOUSE_CANNOT_STORE', `ClickHouse could not ${step} now (nothing was changed; retry later): ${err.message}`, err);
}
