import type { Readable } from 'node:stream';
import { newNonce } from '../allocator/allocator.js';
import type { Allocation, AllocationRequest } from '../allocator/window.js';
import type { Attacher } from '../clickhouse/attach.js';
import type { TableCatalog } from '../clickhouse/catalog.js';
import { ClickHouseQueryError, type ClickHouseHttp } from '../clickhouse/http.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import type { Metrics } from '../metrics/metrics.js';
import type { PartStore } from '../parts/store.js';
import { blockIdOf, type StagedPart, type StagingPool } from './staging.js';

export interface InsertRequest {
  database: string;
  table: string;
  /** The statement's text up to the table reference, which is replaced by the staging table. */
  buildQuery(stagingQualified: string): string;
  body: Readable;
  /** ClickHouse settings and format options to pass on to the staging insert. */
  params: Record<string, string>;
  headers: Record<string, string>;
  dedupToken?: string;
  /** Set by the HTTP layer when the client's body ended early: nothing may be committed then. */
  bodyFailure(): ChorusError | undefined;
}

export interface InsertResult {
  lsns: number[];
  /** Blocks that were already in the dedup window (stored once, under their first LSN). */
  deduplicated: number;
  blocks: number;
  rows: number;
}

interface Prepared {
  part: StagedPart;
  tempDir: string;
  entry: Omit<LogEntry, 'lsn' | 'allocatedAtMs'>;
}

/**
 * One insert on its origin replica: stage the rows in ClickHouse, copy each staged part into
 * the part store, allocate LSNs (or learn they are duplicates), record the entries durably,
 * attach locally, and only then answer. Peers are told at once and fetch the parts.
 */
export class InsertPipeline {
  constructor(
    private readonly deps: {
      self: string;
      ch: ClickHouseHttp;
      catalog: TableCatalog;
      staging: StagingPool;
      store: PartStore;
      log: LocalLog;
      attacher: Attacher;
      allocate: (request: AllocationRequest) => Promise<Allocation[]>;
      announce: (entries: LogEntry[]) => void;
      hold: (lsns: number[]) => () => void;
      metrics: Metrics;
      logger: Logger;
    },
  ) {}

  async insert(req: InsertRequest): Promise<InsertResult> {
    const { ch, catalog, staging, store, log, attacher, metrics } = this.deps;
    const table = await catalog.resolve(req.database, req.table);
    const label = `${table.database}.${table.name}`;
    const stage = await staging.acquire(table);
    const prepared: Prepared[] = [];
    try {
      try {
        await ch.request(req.buildQuery(stage.qualified), { body: req.body, params: req.params, headers: req.headers });
      } catch (err) {
        const bodyFailure = req.bodyFailure();
        if (bodyFailure) throw bodyFailure;
        if (err instanceof ClickHouseQueryError) {
          throw new ChorusError('BAD_DATA', `ClickHouse refused the rows for ${label}: ${err.message}`, err);
        }
        throw err;
      }
      const bodyFailure = req.bodyFailure();
      if (bodyFailure) throw bodyFailure;

      const parts = await stage.parts();
      const perPartition = new Map<string, number>();
      for (const part of parts) {
        const { tempDir, files } = await store.linkFrom(part.path);
        const checksums = files.find((f) => f.name === 'checksums.txt');
        if (!checksums) {
          await store.discard(tempDir);
          throw new ChorusError('INTERNAL', `staged part ${part.name} has no checksums.txt`);
        }
        const index = perPartition.get(part.partitionId) ?? 0;
        perPartition.set(part.partitionId, index + 1);
        const blockId = blockIdOf(table, part.partitionId, checksums.sha256, req.dedupToken !== undefined ? { value: req.dedupToken, index } : undefined);
        prepared.push({ part, tempDir, entry: {
          kind: 'insert',
          database: table.database,
          table: table.name,
          partitionId: part.partitionId,
          blockId,
          partName: part.name,
          checksumsSha256: checksums.sha256,
          rows: Number(part.rows),
          bytes: files.reduce((sum, f) => sum + f.size, 0),
          files,
          origin: this.deps.self,
        } });
      }
      if (prepared.length === 0) return { lsns: [], deduplicated: 0, blocks: 0, rows: 0 };

      const allocations = await this.deps.allocate({ nonce: newNonce(), origin: this.deps.self, blockIds: prepared.map((p) => p.entry.blockId) });
      const allocatedAtMs = Date.now();
      const fresh: LogEntry[] = [];
      let deduplicated = 0;
      for (const [i, p] of prepared.entries()) {
        const allocation = allocations[i]!;
        if (allocation.duplicate) {
          deduplicated++;
          metrics.dedupHits.inc({ table: label });
          continue;
        }
        await store.commit(p.tempDir, allocation.lsn);
        fresh.push({ ...p.entry, lsn: allocation.lsn, allocatedAtMs });
      }
      const release = this.deps.hold(fresh.map((e) => e.lsn));
      try {
        log.addEntries(fresh, 'stored');
        // Durable and allocated: peers may apply it now, even if attaching here fails below
        // (the applier then retries it here, and the client's retry is answered as a duplicate).
        this.deps.announce(fresh);
        for (const entry of fresh) {
          const block = await attacher.attach(entry);
          log.markApplied(entry, block);
        }
      } finally {
        release();
      }
      const rows = fresh.reduce((sum, e) => sum + e.rows, 0);
      metrics.insertedRows.inc({ table: label }, rows);
      return { lsns: allocations.map((a) => a.lsn), deduplicated, blocks: prepared.length, rows };
    } finally {
      for (const p of prepared) await store.discard(p.tempDir);
      // Emptying the staging table need not delay the answer: the pool hands it out again
      // only once it is empty.
      void staging.release(table, stage).catch((err: unknown) => this.deps.logger.warn({ err }, 'could not empty a staging table'));
    }
  }
}
