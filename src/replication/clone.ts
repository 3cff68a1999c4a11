import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Attacher } from '../clickhouse/attach.js';
import { checkCreateQuery, isReplicableEngine, type TableCatalog } from '../clickhouse/catalog.js';
import { quoteIdent, quoteString, type ClickHouseHttp } from '../clickhouse/http.js';
import { Semaphore, sleep } from '../core/async.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { FileInfo, LogEntry, Range } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import { validateEntry } from '../log/validate.js';
import { downloadPart } from '../parts/fetch.js';
import type { InterserverClient } from '../tls/https.js';
import { assertSafeFileName, assertSafeName, linkPart, manifestOf } from '../parts/files.js';
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
  /** The replicated databases that exist at the source, tables or not (absent from older sources). */
  databases?: string[];
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

  /** Snapshots taken and not yet swept, newest last; a clone reads its manifest from here. */
  private readonly held = new Map<string, { manifest: SnapshotManifest; takenAt: number }>();
  /** One snapshot at a time: each one hardlinks every part of every table. */
  private readonly taking = new Semaphore(1);

  get(id: string): SnapshotManifest | undefined {
    return this.held.get(id)?.manifest;
  }

  async create(): Promise<SnapshotManifest> {
    return this.taking.run(() => this.createOne());
  }

  private async createOne(): Promise<SnapshotManifest> {
    const { ch } = this.deps;
    const id = randomUUID();
    const root = join(this.dir, id);
    const dbs = this.deps.databases.map(quoteString).join(', ');
    const listTables = async () =>
      (
        await ch.rows<{ database: string; name: string; engine: string; create_table_query: string }>(
          `SELECT database, name, engine, create_table_query FROM system.tables WHERE database IN (${dbs}) ORDER BY database, name`,
        )
      ).filter((t) => isReplicableEngine(t.engine));
    const manifest: SnapshotManifest = { id, source: this.deps.self, maxLsn: 0, applied: [], databases: [], tables: [], unreplicated: [] };
    const linked: Array<{ table: SnapshotTable; part: Omit<SnapshotPart, 'files' | 'checksumsSha256'>; dir: string }> = [];
    // Attaches, drops, mutations and schema changes wait while the tables are locked: only what
    // makes the snapshot consistent (the tables' definitions, the parts listed and hardlinked, the
    // log's position) happens inside; hashing every file, which takes as long as reading the data,
    // happens after. A table created, dropped or renamed between the listing and the locks makes
    // the snapshot start again.
    // A mutation submitted and not finished has changed some parts and not others, and a clone
    // could neither skip it nor run it again: the snapshot waits until none runs (none is
    // submitted while the tables are locked).
    const deadline = Date.now() + MUTATION_WAIT_MS;
    for (;;) {
      const names = (await listTables()).map((t) => `${t.database}.${t.name}`);
      const running = this.runningMutations(names);
      if (running.length === 0) {
        const taken = await this.deps.attacher.withTablesLocked(names, async () => {
          if (this.runningMutations(names).length > 0) return false;
          const replicated = await listTables();
          if (replicated.map((t) => `${t.database}.${t.name}`).join('\n') !== names.join('\n')) return false;
          await this.listAndLink(manifest, replicated, root, linked);
          return true;
        });
        if (taken) break;
      } else if (Date.now() > deadline) {
        throw new ChorusError('FAILED_PRECONDITION', `mutations still running here after ${MUTATION_WAIT_MS / 1000} s (LSN ${running.join(', ')}): a snapshot waits for them to finish; try again later, or clone from another peer`);
      }
      await sleep(200);
    }
    for (const { table, part, dir } of linked) {
      const files = await manifestOf(dir);
      table.parts.push({ ...part, files, checksumsSha256: files.find((f) => f.name === 'checksums.txt')!.sha256 });
    }
    this.held.set(id, { manifest, takenAt: Date.now() });
    // A source keeps only a few snapshots: each holds hardlinks that keep merged-away parts on disk.
    while (this.held.size > MAX_HELD_SNAPSHOTS) this.remove(this.held.keys().next().value!);
    this.deps.logger.info(
      { snapshot: id, tables: manifest.tables.length, parts: manifest.tables.reduce((s, t) => s + t.parts.length, 0), unreplicated: manifest.unreplicated.length },
      'snapshot taken for a clone',
    );
    if (manifest.unreplicated.length) {
      this.deps.logger.warn({ unreplicated: manifest.unreplicated }, 'parts written to ClickHouse around Chorus are not part of the snapshot');
    }
    return manifest;
  }

  /** Every LSN's position and every active part of `replicated`, hardlinked under `root` (the tables locked). */
  private async listAndLink(
    manifest: SnapshotManifest,
    replicated: Array<{ database: string; name: string; create_table_query: string }>,
    root: string,
    linked: Array<{ table: SnapshotTable; part: Omit<SnapshotPart, 'files' | 'checksumsSha256'>; dir: string }>,
  ): Promise<void> {
    const { ch, log } = this.deps;
    manifest.applied = log.appliedRanges();
    manifest.databases = (await ch.rows<{ name: string }>(`SELECT name FROM system.databases WHERE name IN (${this.deps.databases.map(quoteString).join(', ')}) ORDER BY name`)).map((d) => d.name);
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
        linkPart(p.path, target);
        linked.push({
          table: entry,
          dir: target,
          part: {
            name: p.name,
            partitionId: p.partitionId,
            minBlock: p.minBlock,
            maxBlock: p.maxBlock,
            lsns: [...new Set(mapped.map((b) => b.lsn))].sort((a, b) => a - b),
          },
        });
      }
      manifest.tables.push(entry);
    }
  }

  /** LSNs of mutations of `tables` submitted here and not finished. */
  private runningMutations(tables: string[]): number[] {
    const names = new Set(tables);
    return this.deps.log.runningMutations().filter((e) => names.has(`${e.database}.${e.table}`)).map((e) => e.lsn);
  }

  private remove(id: string): void {
    this.held.delete(id);
    rmSync(join(this.dir, id), { recursive: true, force: true });
  }

  partDir(id: string, database: string, table: string, part: string): string {
    return join(this.dir, id, database, table, part);
  }

  /** Snapshots older than `maxAgeMs` are removed (a clone that never finished), with what is left of earlier runs. */
  sweep(maxAgeMs: number, now = Date.now()): void {
    for (const [id, { takenAt }] of this.held) if (now - takenAt > maxAgeMs) this.remove(id);
    let names: string[] = [];
    try {
      names = readdirSync(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      if (this.held.has(name)) continue;
      const path = join(this.dir, name);
      if (now - statSync(path).mtimeMs > maxAgeMs) rmSync(path, { recursive: true, force: true });
    }
  }
}

/** How long a snapshot waits for the mutations running on the source to finish. */
export const MUTATION_WAIT_MS = 600_000;

/** How many snapshots a source keeps for clones at once; the oldest goes first. */
export const MAX_HELD_SNAPSHOTS = 4;

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
    private readonly deps: {
      ch: ClickHouseHttp;
      catalog: TableCatalog;
      attacher: Attacher;
      log: LocalLog;
      store: PartStore;
      logger: Logger;
      timeoutMs: number;
      databases: string[];
      /** The shard's members: the only origins an entry of the snapshot may name (see validateEntry). */
      members: ReadonlySet<string>;
    },
  ) {}

  async clone(source: { name: string; interserver: InterserverClient }): Promise<CloneProgress> {
    const { ch, log, logger } = this.deps;
    const peer = source.interserver;
    log.setMeta('clone', `in-progress:${source.name}`);
    this.progress = { state: 'cloning', source: source.name, parts: 0, partsDone: 0, bytes: 0, bytesDone: 0, startedAt: Date.now(), bytesPerSec: 0, unreplicated: 0 };
    try {
      const res = await peer.text('/v1/snapshots', { method: 'POST', timeoutMs: this.deps.timeoutMs });
      if (res.status !== 200) throw new ChorusError('PEER_UNAVAILABLE', `peer ${source.name} could not take a snapshot: ${res.status} ${res.body.slice(0, 500)}`);
      let raw: unknown;
      try {
        raw = JSON.parse(res.body);
      } catch {
        throw new ChorusError('PEER_UNAVAILABLE', `peer ${source.name} sent a snapshot manifest that is not JSON`);
      }
      const manifest = parseManifest(raw, source.name);
      for (const t of manifest.tables) {
        if (!this.deps.databases.includes(t.database)) {
          throw new ChorusError('PEER_UNAVAILABLE', `peer ${source.name} offered table ${t.database}.${t.table}, outside this replica's databases (${this.deps.databases.join(', ')})`);
        }
        checkCreateQuery(t);
      }
      const parts = manifest.tables.flatMap((t) => t.parts.map((p) => ({ t, p })));
      this.progress.parts = parts.length;
      this.progress.bytes = parts.reduce((s, x) => s + x.p.files.reduce((a, f) => a + f.size, 0), 0);
      this.progress.unreplicated = manifest.unreplicated.length;
      logger.info({ source: source.name, parts: parts.length, bytes: this.progress.bytes, maxLsn: manifest.maxLsn }, 'clone started');
      // Every replicated database the source has, tables or not: a CREATE TABLE after the snapshot goes into one.
      for (const db of new Set([...(manifest.databases ?? []).filter((d) => this.deps.databases.includes(d)), ...manifest.tables.map((t) => t.database)])) {
        await ch.exec(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(db)}`);
      }
      for (const t of manifest.tables) {
        await ch.exec(t.createQuery.replace(/^CREATE TABLE /, 'CREATE TABLE IF NOT EXISTS '));
        // What was created is checked, not only what was sent: a table Chorus would not
        // replicate (another engine, a non-local disk) ends the clone.
        await this.deps.catalog.resolve(t.database, t.table);
      }
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
      const entries = await this.loadEntries(peer, manifest);
      log.setMeta('clone', `done:${source.name}:${manifest.maxLsn}`);
      this.progress.state = 'done';
      logger.info(
        { source: source.name, parts: this.progress.parts, bytes: this.progress.bytesDone, bytesPerSec: Math.round(this.progress.bytesPerSec), entries, unreplicated: manifest.unreplicated.length },
        'clone done; catching up from the snapshot',
      );
      return this.progress;
    } catch (err) {
      this.progress.state = 'failed';
      this.progress.error = (err as Error).message;
      throw err;
    }
  }

  /**
   * Streams the source's log up to the snapshot into the local log, in batches: a log of
   * millions of entries is never held whole in memory. Returns the number of entries.
   */
  private async loadEntries(peer: InterserverClient, manifest: SnapshotManifest): Promise<number> {
    const res = await peer.request(`/v1/snapshots/${encodeURIComponent(manifest.id)}/entries`, { timeoutMs: this.deps.timeoutMs });
    if (res.statusCode !== 200) {
      res.resume();
      throw new ChorusError('PEER_UNAVAILABLE', `snapshot entries from ${peer.peerName}: ${res.statusCode}`);
    }
    let batch: LogEntry[] = [];
    let count = 0;
    const flush = () => {
      this.deps.log.loadSnapshotEntries(batch, manifest.applied);
      count += batch.length;
      batch = [];
    };
    for await (const line of ndjsonLines(res)) {
      let entry: LogEntry;
      try {
        entry = validateEntry(JSON.parse(line), { members: this.deps.members });
      } catch (err) {
        throw new ChorusError('PEER_UNAVAILABLE', `snapshot entries from ${manifest.source}: ${(err as Error).message}`, err);
      }
      if (entry.lsn > manifest.maxLsn) throw new ChorusError('PEER_UNAVAILABLE', `snapshot entries from ${manifest.source}: LSN ${entry.lsn} is beyond the snapshot's ${manifest.maxLsn}`);
      batch.push(entry);
      if (batch.length >= ENTRY_BATCH) flush();
    }
    flush();
    return count;
  }
}

const ENTRY_BATCH = 1000;
/** A longer line is not an entry: an entry's manifest of a few hundred files is far shorter. */
const MAX_ENTRY_LINE = 4 * 1024 * 1024;

async function* ndjsonLines(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line) yield line;
    }
    if (pending.length > MAX_ENTRY_LINE) throw new ChorusError('PEER_UNAVAILABLE', `a snapshot entry longer than ${MAX_ENTRY_LINE} bytes`);
  }
  pending += decoder.decode();
  if (pending) yield pending;
}

const safeName = z.string().refine((name) => {
  try {
    assertSafeName('name', name);
    return true;
  } catch {
    return false;
  }
}, 'not a safe name');
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/);

const manifestSchema = z.object({
  id: z.string().regex(/^[0-9a-f-]{36}$/),
  source: z.string().max(255),
  maxLsn: count,
  applied: z.array(z.object({ first: count, last: count })).max(10_000_000),
  databases: z.array(safeName).max(10_000).optional(),
  tables: z
    .array(
      z.object({
        database: safeName,
        table: safeName,
        createQuery: z.string().max(1024 * 1024),
        parts: z
          .array(
            z.object({
              name: safeName,
              partitionId: z.string().max(255),
              minBlock: count,
              maxBlock: count,
              files: z.array(z.object({ name: z.string().max(512), size: count, sha256 })).min(1).max(100_000),
              checksumsSha256: sha256,
              lsns: z.array(count).max(10_000_000),
            }),
          )
          .max(1_000_000),
      }),
    )
    .max(100_000),
  unreplicated: z.array(z.object({ database: z.string(), table: z.string(), part: z.string(), rows: count })).max(1_000_000),
});

/** A peer's snapshot manifest, checked before any name in it becomes a path or a statement. */
export function parseManifest(raw: unknown, source: string): SnapshotManifest {
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ChorusError('PEER_UNAVAILABLE', `peer ${source} sent an invalid snapshot manifest: ${issue.path.join('.')}: ${issue.message}`);
  }
  for (const t of parsed.data.tables) {
    for (const p of t.parts) {
      for (const f of p.files) {
        try {
          assertSafeFileName(f.name);
        } catch (err) {
          throw new ChorusError('PEER_UNAVAILABLE', `peer ${source} sent an invalid snapshot manifest: ${(err as Error).message}`, err);
        }
      }
    }
  }
  return parsed.data;
}

export { checkCreateQuery };
