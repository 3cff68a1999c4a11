import { randomUUID } from 'node:crypto';
import { linkSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Attacher } from '../clickhouse/attach.js';
import { isReplicableEngine, type TableCatalog } from '../clickhouse/catalog.js';
import { quoteIdent, quoteString, type ClickHouseHttp } from '../clickhouse/http.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { FileInfo, LogEntry, Range } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import { downloadPart } from '../parts/fetch.js';
import type { InterserverClient } from '../tls/https.js';
import { linkPart, manifestOf } from '../parts/files.js';
import type { PartStore } from '../parts/store.js';

export interface SnapshotPart {
  name: string;
  partitionId: string;
  minBlock: number;
  maxBlock: number;
  files: FileInfo[];
  checksumsSha256: string;
  /** The LSNs whose rows this part holds, from the source's local block map. */
  lsns: number[];
}

export interface SnapshotTable {
  database: string;
  table: string;
  createQuery: string;
  parts: SnapshotPart[];
}

export interface SnapshotManifest {
  id: string;
  source: string;
  maxLsn: number;
  /** Every LSN applied (or voided) at the source when the snapshot was taken. */
  applied: Range[];
  tables: SnapshotTable[];
  /** Parts none of whose blocks came through Chorus: reported, not copied. */
  unreplicated: Array<{ database: string; table: string; part: string; rows: number }>;
}

/**
 * The source side of a clone: a consistent snapshot of every replicated table, taken while no
 * attach or drop runs, as hardlinks of the active parts under dataDir/snapshots/<id>, plus the
 * LSNs each part covers (derived from the local block map) and the set of applied LSNs.
 */
export class Snapshots {
  readonly dir: string;

  constructor(
    dataDir: string,
    private readonly deps: { self: string; ch: ClickHouseHttp; catalog: TableCatalog; attacher: Attacher; log: LocalLog; databases: string[]; logger: Logger },
  ) {
    this.dir = join(dataDir, 'snapshots');
  }

  async create(): Promise<SnapshotManifest> {
    const { ch, log } = this.deps;
    const id = randomUUID();
    const root = join(this.dir, id);
    const dbs = this.deps.databases.map(quoteString).join(', ');
    const tables = await ch.rows<{ database: string; name: string; engine: string; create_table_query: string }>(
      `SELECT database, name, engine, create_table_query FROM system.tables WHERE database IN (${dbs})`,
    );
    const replicated = tables.filter((t) => isReplicableEngine(t.engine));
    const manifest: SnapshotManifest = { id, source: this.deps.self, maxLsn: 0, applied: [], tables: [], unreplicated: [] };
    await this.deps.attacher.withTablesLocked(
      replicated.map((t) => `${t.database}.${t.name}`),
      async () => {
        manifest.applied = log.appliedRanges();
        manifest.maxLsn = log.maxLsn();
        for (const t of replicated) {
          const parts = await ch.rows<{ name: string; partitionId: string; minBlock: number; maxBlock: number; path: string; rows: number }>(
            `SELECT name, partition_id AS partitionId, min_block_number AS minBlock, max_block_number AS maxBlock, path, rows FROM system.parts
             WHERE database = ${quoteString(t.database)} AND table = ${quoteString(t.name)} AND active ORDER BY name`,
          );
          const blockMap = log.blockMap(t.database, t.name);
          const entry: SnapshotTable = { database: t.database, table: t.name, createQuery: t.create_table_query, parts: [] };
          for (const p of parts) {
            const mapped = blockMap.filter((b) => b.partitionId === p.partitionId && b.blockNumber >= p.minBlock && b.blockNumber <= p.maxBlock);
            if (mapped.length === 0) {
              manifest.unreplicated.push({ database: t.database, table: t.name, part: p.name, rows: Number(p.rows) });
              continue;
            }
            const target = join(root, t.database, t.name, p.name);
            mkdirSync(target, { recursive: true });
            linkPart(p.path, target);
            const files = await manifestOf(target);
            entry.parts.push({
              name: p.name,
              partitionId: p.partitionId,
              minBlock: p.minBlock,
              maxBlock: p.maxBlock,
              files,
              checksumsSha256: files.find((f) => f.name === 'checksums.txt')!.sha256,
              lsns: [...new Set(mapped.map((b) => b.lsn))].sort((a, b) => a - b),
            });
          }
          manifest.tables.push(entry);
        }
      },
    );
    this.deps.logger.info(
      { snapshot: id, tables: manifest.tables.length, parts: manifest.tables.reduce((s, t) => s + t.parts.length, 0), unreplicated: manifest.unreplicated.length },
      'snapshot taken for a clone',
    );
    if (manifest.unreplicated.length) {
      this.deps.logger.warn({ unreplicated: manifest.unreplicated }, 'parts written to ClickHouse around Chorus are not part of the snapshot');
    }
    return manifest;
  }

  partDir(id: string, database: string, table: string, part: string): string {
    return join(this.dir, id, database, table, part);
  }

  /** Snapshots older than `maxAgeMs` are removed (a clone that never finished). */
  sweep(maxAgeMs: number): void {
    let names: string[] = [];
    try {
      names = readdirSync(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      const path = join(this.dir, name);
      if (Date.now() - statSync(path).mtimeMs > maxAgeMs) rmSync(path, { recursive: true, force: true });
    }
  }
}

export interface CloneProgress {
  state: 'idle' | 'cloning' | 'done' | 'failed';
  source?: string;
  parts: number;
  partsDone: number;
  bytes: number;
  bytesDone: number;
  startedAt?: number;
  bytesPerSec: number;
  unreplicated: number;
  error?: string;
}

/**
 * The receiving side: copies a peer's snapshot into this (empty) replica, creating the tables,
 * downloading and verifying every part, attaching it and mapping its new block to the LSNs it
 * covers; then loads the peer's log with those LSNs applied. What came after the snapshot is
 * caught up by gossip as usual.
 */
export class Cloner {
  progress: CloneProgress = { state: 'idle', parts: 0, partsDone: 0, bytes: 0, bytesDone: 0, bytesPerSec: 0, unreplicated: 0 };

  constructor(
    private readonly deps: { ch: ClickHouseHttp; catalog: TableCatalog; attacher: Attacher; log: LocalLog; store: PartStore; logger: Logger; timeoutMs: number },
  ) {}

  async clone(source: { name: string; interserver: InterserverClient }): Promise<CloneProgress> {
    const { ch, log, logger } = this.deps;
    const peer = source.interserver;
    log.setMeta('clone', `in-progress:${source.name}`);
    this.progress = { state: 'cloning', source: source.name, parts: 0, partsDone: 0, bytes: 0, bytesDone: 0, startedAt: Date.now(), bytesPerSec: 0, unreplicated: 0 };
    try {
      const res = await peer.text('/v1/snapshots', { method: 'POST', timeoutMs: this.deps.timeoutMs });
      if (res.status !== 200) throw new ChorusError('PEER_UNAVAILABLE', `peer ${source.name} could not take a snapshot: ${res.status} ${res.body}`);
      const manifest = JSON.parse(res.body) as SnapshotManifest;
      const parts = manifest.tables.flatMap((t) => t.parts.map((p) => ({ t, p })));
      this.progress.parts = parts.length;
      this.progress.bytes = parts.reduce((s, x) => s + x.p.files.reduce((a, f) => a + f.size, 0), 0);
      this.progress.unreplicated = manifest.unreplicated.length;
      logger.info({ source: source.name, parts: parts.length, bytes: this.progress.bytes, maxLsn: manifest.maxLsn }, 'clone started');
      for (const db of new Set(manifest.tables.map((t) => t.database))) await ch.exec(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(db)}`);
      for (const t of manifest.tables) await ch.exec(t.createQuery.replace(/^CREATE TABLE /, 'CREATE TABLE IF NOT EXISTS '));
      const work = join(this.deps.store.tmpDir, `clone-${manifest.id}`);
      for (const { t, p } of parts) {
        const dir = join(work, t.database, t.table, p.name);
        const path = `/v1/snapshots/${manifest.id}/${encodeURIComponent(t.database)}/${encodeURIComponent(t.table)}/${encodeURIComponent(p.name)}`;
        this.progress.bytesDone += await downloadPart(peer, path, p.files, dir, `snapshot part ${t.database}.${t.table}/${p.name} from ${source.name}`, this.deps.timeoutMs);
        const block = await this.deps.attacher.attachCopy(dir, {
          database: t.database,
          table: t.table,
          partitionId: p.partitionId,
          partName: p.name,
          checksumsSha256: p.checksumsSha256,
        });
        log.mapBlock(t.database, t.table, p.partitionId, block, p.lsns);
        rmSync(dir, { recursive: true, force: true });
        this.progress.partsDone++;
        const seconds = (Date.now() - this.progress.startedAt!) / 1000;
        this.progress.bytesPerSec = seconds > 0 ? this.progress.bytesDone / seconds : 0;
        logger.info(
          { part: `${t.database}.${t.table}/${p.name}`, partsDone: this.progress.partsDone, parts: this.progress.parts, bytesDone: this.progress.bytesDone, bytesPerSec: Math.round(this.progress.bytesPerSec) },
          'clone progress',
        );
      }
      rmSync(work, { recursive: true, force: true });
      const entries = await this.fetchEntries(peer, manifest.id);
      log.loadSnapshotEntries(entries, manifest.applied);
      log.setMeta('clone', `done:${source.name}:${manifest.maxLsn}`);
      this.progress.state = 'done';
      logger.info(
        { source: source.name, parts: this.progress.parts, bytes: this.progress.bytesDone, bytesPerSec: Math.round(this.progress.bytesPerSec), entries: entries.length, unreplicated: manifest.unreplicated.length },
        'clone done; catching up from the snapshot',
      );
      return this.progress;
    } catch (err) {
      this.progress.state = 'failed';
      this.progress.error = (err as Error).message;
      throw err;
    }
  }

  private async fetchEntries(peer: InterserverClient, id: string): Promise<LogEntry[]> {
    const res = await peer.text(`/v1/snapshots/${id}/entries`, { timeoutMs: this.deps.timeoutMs });
    if (res.status !== 200) throw new ChorusError('PEER_UNAVAILABLE', `snapshot entries: ${res.status}`);
    return res.body
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as LogEntry);
  }
}
