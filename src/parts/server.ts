import type https from 'node:https';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { ChorusError } from '../core/errors.js';
import { certificateName } from '../tls/material.js';
import type { Logger } from '../core/logger.js';
import type { Faults } from '../faults/faults.js';
import type { LogEntry } from '../log/entry.js';
import type { LocalLog } from '../log/store.js';
import { assertSafeFileName, assertSafeName, SMALL_FILE_BYTES } from './files.js';
import type { PartStore } from './store.js';
import type { Snapshots } from '../replication/clone.js';

/**
 * Chorus's interserver HTTP: peers download the files of parts held in this replica's part
 * store. Paths are built only from validated names and the LSN's own entry, never from the
 * raw URL.
 */
export function createInterserverServer(deps: {
  self: string;
  log: LocalLog;
  store: PartStore;
  faults: Faults;
  logger: Logger;
  snapshots: Snapshots;
  /** TLS options (mutual TLS between peers); plain HTTP without them. */
  https?: https.ServerOptions;
  /** The shard's members: over TLS, only a certificate naming one of them may take parts and snapshots. */
  members: ReadonlySet<string>;
}): FastifyInstance {
  // Typed as the plain-HTTP instance: routes and handlers do not depend on the transport.
  const app = (Fastify as unknown as (opts: object) => FastifyInstance)({ ...(deps.https ? { https: deps.https } : {}), loggerInstance: deps.logger.child({ component: 'interserver' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) });

  app.setErrorHandler((err, _req, reply) => {
    const e = ChorusError.from(err);
    void reply
      .status(e.httpStatus)
      .header('X-Chorus-Error-Code', e.qualifiedCode)
      .send({ code: e.qualifiedCode, message: e.message });
  });

  // The CA may sign more than the shard's replicas (the CLI's certificate, say): part files and
  // snapshots, which hold the tables' data, go only to a member. The digest stays open to any
  // certificate the CA signed.
  if (deps.https) {
    // A connection's certificate does not change: it is read once per connection, not per
    // request (getPeerCertificate copies the whole certificate into a new object every time).
    const names = new WeakMap<TLSSocket, string | null>();
    app.addHook('onRequest', async (req) => {
      if (req.url === '/v1/digest') return;
      const socket = req.raw.socket as TLSSocket;
      let name = names.get(socket);
      if (name === undefined) names.set(socket, (name = certificateName(socket.getPeerCertificate())));
      if (name === null || !deps.members.has(name)) {
        throw new ChorusError('PERMISSION_DENIED', `the client's certificate (${name ?? 'no CN'}) names no member of this shard`);
      }
    });
  }

  const locate = (params: { lsn: string; part: string }) => {
    if (!/^\d{1,15}$/.test(params.lsn)) throw new ChorusError('BAD_PART_NAME', `invalid LSN ${JSON.stringify(params.lsn)}`);
    assertSafeName('part', params.part);
    const found = deps.log.get(Number(params.lsn));
    if (!found || found.entry.partName !== params.part) {
      throw new ChorusError('PART_NOT_FOUND', `no part ${params.part} for LSN ${params.lsn} here`);
    }
    return found.entry;
  };

  app.get<{ Params: { lsn: string; part: string } }>('/v1/parts/:lsn/:part/manifest', async (req) => {
    const entry = locate(req.params);
    if (!(await deps.store.has(entry.lsn))) throw new ChorusError('PART_NOT_FOUND', `LSN ${entry.lsn} is not in this replica's part store`);
    return { lsn: entry.lsn, part: entry.partName, files: entry.files };
  });

  // The whole part in one response: its files concatenated in manifest order. The receiver
  // splits by the sizes in its own copy of the manifest and verifies every file.
  app.get<{ Params: { lsn: string; part: string } }>('/v1/parts/:lsn/:part', async (req, reply) => {
    const entry = locate(req.params);
    const dir = deps.store.pathOf(entry.lsn);
    try {
      await stat(dir);
    } catch {
      throw new ChorusError('PART_NOT_FOUND', `LSN ${entry.lsn} is not in this replica's part store`);
    }
    // An entry's bytes are the sum of its files' sizes (validateEntry checks it).
    const total = entry.bytes;
    // Small parts (most inserts) are read inline in one go; large ones are streamed.
    let body: Readable =
      total < SMALL_FILE_BYTES
        ? Readable.from([deps.store.readWhole(entry.lsn, entry.files)])
        : Readable.from(
            concatFiles(
              entry.files.map((f) => {
                assertSafeFileName(f.name);
                return join(dir, f.name);
              }),
            ),
          );
    if (deps.faults.takeCorruptServedFile()) {
      req.log.warn({ lsn: entry.lsn }, 'test fault: corrupting a served part');
      body = body.pipe(flipOneByte(Math.floor(total / 2)));
    }
    return reply.header('Content-Type', 'application/octet-stream').header('Content-Length', total).send(body);
  });

  app.get<{ Params: { lsn: string; part: string; file: string } }>('/v1/parts/:lsn/:part/:file', async (req, reply) => {
    assertSafeFileName(req.params.file);
    const entry = locate(req.params);
    const file = entry.files.find((f) => f.name === req.params.file);
    if (!file) throw new ChorusError('PART_NOT_FOUND', `part ${entry.partName} has no file ${req.params.file}`);
    const path = join(deps.store.pathOf(entry.lsn), file.name);
    try {
      await stat(path);
    } catch {
      throw new ChorusError('PART_NOT_FOUND', `LSN ${entry.lsn} is not in this replica's part store`);
    }
    let body: NodeJS.ReadableStream = createReadStream(path);
    if (deps.faults.takeCorruptServedFile()) {
      req.log.warn({ lsn: entry.lsn, file: file.name }, 'test fault: corrupting a served part file');
      body = body.pipe(flipOneByte(Math.floor(file.size / 2)));
    }
    return reply.header('Content-Type', 'application/octet-stream').header('Content-Length', file.size).send(body);
  });

  app.get('/v1/digest', async () => ({ replica: deps.self, maxLsn: deps.log.maxLsn(), appliedWatermark: deps.log.watermarks().applied }));

  // Clone: a consistent snapshot of every replicated table, then its parts and the log.
  app.post('/v1/snapshots', async () => deps.snapshots.create());
  const snapshotOf = (id: string) => {
    const m = deps.snapshots.get(id);
    if (!m) throw new ChorusError('PART_NOT_FOUND', `no snapshot ${JSON.stringify(id.slice(0, 64))} here`);
    return m;
  };
  app.get<{ Params: { id: string } }>('/v1/snapshots/:id/entries', async (req, reply) => {
    const manifest = snapshotOf(req.params.id);
    const lines = Readable.from(
      (function* () {
        for (const e of deps.log.entriesUpTo(manifest.maxLsn)) yield JSON.stringify(e) + '\n';
      })(),
    );
    return reply.header('Content-Type', 'application/x-ndjson').send(lines);
  });
  app.get<{ Params: { id: string; db: string; table: string; part: string } }>('/v1/snapshots/:id/:db/:table/:part', async (req, reply) => {
    const { id, db, table, part } = req.params;
    for (const [kind, name] of [['database', db], ['table', table], ['part', part]] as const) assertSafeName(kind, name);
    const manifest = snapshotOf(id);
    const found = manifest.tables.find((t) => t.database === db && t.table === table)?.parts.find((p) => p.name === part);
    if (!found) throw new ChorusError('PART_NOT_FOUND', `snapshot ${id} has no part ${db}.${table}/${part}`);
    const dir = deps.snapshots.partDir(id, db, table, part);
    for (const f of found.files) assertSafeFileName(f.name);
    const total = found.files.reduce((s, f) => s + f.size, 0);
    return reply
      .header('Content-Type', 'application/octet-stream')
      .header('Content-Length', total)
      .send(Readable.from(concatFiles(found.files.map((f) => join(dir, f.name)))));
  });

  return app;
}

/** One of this replica's parts, to be sent inside a push, or null when it cannot be read (the follower then fetches it). */
export function partForPush(store: PartStore, entry: LogEntry): Buffer | null {
  try {
    return store.readWhole(entry.lsn, entry.files);
  } catch {
    return null;
  }
}

/**
 * The copy of a pushed part that goes to one peer. The served-file corruption fault applies here
 * too, to one copy: a test of invariant 7 must see bytes refused whichever way they travel.
 */
export function pushedCopy(data: Buffer, faults: Faults): Buffer {
  if (!faults.takeCorruptServedFile() || data.length === 0) return data;
  const copy = Buffer.from(data);
  copy[Math.floor(copy.length / 2)]! ^= 0xff;
  return copy;
}

async function* concatFiles(paths: string[]): AsyncGenerator<Buffer> {
  for (const path of paths) for await (const chunk of createReadStream(path)) yield chunk as Buffer;
}

function flipOneByte(offset: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (offset >= seen && offset < seen + chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[offset - seen] = chunk[offset - seen]! ^ 0xff;
      }
      seen += chunk.length;
      cb(null, chunk);
    },
  });
}
