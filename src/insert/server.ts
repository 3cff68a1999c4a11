import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { Readable, Transform } from 'node:stream';
import type { Config } from '../config/config.js';
import { ChorusError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../metrics/metrics.js';
import { ClickHouseRefusal, clientCredentials, type GrantChecker } from './clients.js';
import { findUnreplicatedWrite, insertClause, insertSelect, insertSettings, parseInsert, parseMutation, parseSchema, parseTableOp, type InsertTarget, type MutationOp, type SchemaOp } from './parse.js';
import { MUTATION_GRANTS } from '../clickhouse/dialect.js';
import { isReplicableEngine } from '../clickhouse/catalog.js';
import { checkStatementSettings, stagingParams } from './settings.js';
import type { InsertPipeline } from './pipeline.js';
import { quorumSettings, type Quorum } from '../replication/quorum.js';
import type { Backpressure } from './backpressure.js';
import type { TableCatalog } from '../clickhouse/catalog.js';

export interface HttpDeps {
  config: Config;
  pipeline: InsertPipeline;
  metrics: Metrics;
  logger: Logger;
  acceptingInserts: () => boolean;
  /** Asks ClickHouse, as the client's user, whether it may do what it asks. */
  grants: GrantChecker;
  /** Refuses inserts (503, Retry-After) while this replica could not take them well. */
  backpressure: Backpressure;
  /** Which databases and tables Chorus replicates. */
  catalog: TableCatalog;
  /** insert_quorum: waits for peers to apply an insert's LSNs. */
  quorum: Quorum;
  /** X-Chorus-Wait-LSN: whether every LSN up to `lsn` is applied here, waiting up to `timeoutMs`. */
  waitAppliedThrough: (lsn: number, timeoutMs: number, signal: AbortSignal) => Promise<boolean>;
}

/** The metric label of a table Chorus does not replicate: client input never becomes a label. */
const OTHER_TABLE_LABEL = '(not replicated)';

/**
 * Whether the same request sent again may succeed and is safe: a 503 (this replica or its
 * ClickHouse or ZooKeeper is unavailable now; nothing was acknowledged, and a retry of an insert
 * whose outcome is unknown is deduplicated), an insert recorded but not yet attached here, or a
 * body cut short (nothing was inserted). Other errors will fail again the same way.
 */
export function retryable(e: ChorusError): boolean {
  return e.httpStatus === 503 || e.code === 'ATTACH_FAILED' || e.code === 'TRUNCATED_BODY' || e.code === 'REQUEST_TIMEOUT' || e.code === 'QUORUM_TIMEOUT' || e.code === 'LSN_WAIT_TIMEOUT';
}

/** The headers every error reply of Chorus's HTTP port carries. */
export function errorHeaders(e: ChorusError): Record<string, string> {
  const headers: Record<string, string> = { 'X-Chorus-Error-Code': e.qualifiedCode, 'X-Chorus-Retryable': retryable(e) ? '1' : '0' };
  if (e.httpStatus === 503) headers['Retry-After'] = String(e.retryAfterSeconds ?? 1);
  return headers;
}

export function sendError(reply: FastifyReply, err: unknown): FastifyReply {
  const e = ChorusError.from(err);
  if (e instanceof ClickHouseRefusal) {
    // ClickHouse's own answer to this user, as a client talking to ClickHouse would see it.
    if (e.clickhouseCode !== undefined) reply.header('X-ClickHouse-Exception-Code', String(e.clickhouseCode));
    return reply.code(e.status).headers(errorHeaders(e)).header('Content-Type', 'text/plain; charset=utf-8').send(e.body);
  }
  return reply
    .code(e.httpStatus)
    .headers(errorHeaders(e))
    .header('Content-Type', 'text/plain; charset=utf-8')
    .send(`${e.qualifiedCode}: ${e.message}\n`);
}

/**
 * Chorus's HTTP port speaks ClickHouse's HTTP interface: INSERTs into replicated tables go
 * through the insert pipeline, everything else is passed to the local ClickHouse unchanged,
 * so one URL serves a client's writes and reads.
 */
export function createHttpServer(deps: HttpDeps): FastifyInstance {
  const { config, logger } = deps;
  const app = Fastify({
    loggerInstance: logger.child({ component: 'http' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.http.maxInsertBytes,
    // While closing, requests still get Chorus's own answers (SHUTTING_DOWN with its code), not
    // fastify's bare 503.
    return503OnClosing: false,
    requestTimeout: config.http.requestTimeoutMs,
    keepAliveTimeout: config.http.keepAliveTimeoutMs,
    // Node checks request timeouts this often (30 s by default, too coarse for short limits).
    http: { connectionsCheckingInterval: Math.min(1000, config.http.requestTimeoutMs), headersTimeout: Math.min(60_000, config.http.requestTimeoutMs) },
    // Errors Node's HTTP parser raises before any handler (a request that took longer than
    // http.requestTimeoutMs, malformed HTTP) are answered with Chorus's code too.
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable) return void socket.destroy();
      const e =
        err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? new ChorusError('REQUEST_TIMEOUT', `the request did not arrive whole within http.requestTimeoutMs (${config.http.requestTimeoutMs} ms); nothing was inserted`)
          : new ChorusError('BAD_QUERY', `malformed HTTP request: ${err.code ?? err.message}`);
      const body = `${e.qualifiedCode}: ${e.message}\n`;
      const headers = { ...errorHeaders(e), 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close' };
      socket.end(`HTTP/1.1 ${e.httpStatus} ${http.STATUS_CODES[e.httpStatus]}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${body}`);
    },
  });
  // Bodies are streamed, never buffered: leave request.raw unread for the handlers.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

  const clickhouse = new URL(config.clickhouse.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

  const proxy = (req: FastifyRequest, reply: FastifyReply, body: Readable | null) => {
    reply.hijack();
    const headers = { ...req.headers, host: clickhouse.host };
    const upstream = http.request(
      { protocol: clickhouse.protocol, hostname: clickhouse.hostname, port: clickhouse.port, path: req.raw.url, method: req.method, headers, agent, timeout: config.clickhouse.requestTimeoutMs },
      (res) => {
        reply.raw.writeHead(res.statusCode ?? 502, deps.acceptingInserts() ? res.headers : { ...res.headers, connection: 'close' });
        res.pipe(reply.raw);
      },
    );
    upstream.on('timeout', () => upstream.destroy(new Error(`no answer within clickhouse.requestTimeoutMs (${config.clickhouse.requestTimeoutMs} ms)`)));
    // A client that goes away stops its query on ClickHouse too.
    reply.raw.once('close', () => {
      if (!reply.raw.writableEnded) upstream.destroy();
    });
    upstream.on('error', (err) => {
      if (!reply.raw.headersSent) {
        const e = new ChorusError('CLICKHOUSE_UNAVAILABLE', `ClickHouse at ${config.clickhouse.url} unreachable: ${err.message}`);
        reply.raw.writeHead(e.httpStatus, { 'Content-Type': 'text/plain; charset=utf-8', ...errorHeaders(e) });
        reply.raw.end(`${e.qualifiedCode}: ${e.message}\n`);
      } else reply.raw.destroy();
    });
    if (body) body.pipe(upstream);
    else upstream.end();
  };

  const insert = async (
    req: FastifyRequest,
    reply: FastifyReply,
    target: InsertTarget,
    statement: string,
    body: Readable,
    bodyState: BodyState,
    /** The SELECT of an INSERT ... SELECT, which runs with Chorus's rights and is checked as the client's first. */
    select: string | undefined,
  ) => {
    const search = new URL(req.url, 'http://x').searchParams;
    const params = Object.fromEntries(search);
    const database = target.database ?? sessionDatabase(req, search);
    if (!deps.acceptingInserts()) throw new ChorusError('SHUTTING_DOWN', 'this replica is shutting down (or was decommissioned) and takes no more inserts; send it to another replica');
    const replicated = await deps.pipeline.replicates(database, target.table);
    const label = replicated ? `${database}.${target.table}` : OTHER_TABLE_LABEL;
    // Read before anything is staged: a bad value, or a quorum the shard cannot have, changes nothing.
    const quorum = replicated ? quorumSettings(params) : undefined;
    const replicasNeeded = quorum ? deps.quorum.replicasNeeded(quorum) : 1;
    const release = replicated ? deps.backpressure.admit(label) : () => undefined;
    const aborted = abortOnDisconnect(req, reply);
    const encoding = header(req, 'content-encoding');
    const started = process.hrtime.bigint();
    const startedAt = performance.now();
    try {
      // Before anything is staged: a client's user that may not insert is refused by ClickHouse.
      if (replicated) {
        const client = clientCredentials(req.headers, search);
        await deps.metrics.timed('origin', 'grants', () => deps.grants.check(client, 'insert', database, target.table, aborted));
        if (select !== undefined) await deps.grants.checkSelect(client, select, aborted);
      }
      const result = await deps.pipeline.insert({
        database,
        table: target.table,
        buildQuery: (staging) => statement.slice(0, target.span[0]) + staging + statement.slice(target.span[1]),
        body,
        params: stagingParams(params, {}),
        headers: encoding ? { 'Content-Encoding': encoding } : {},
        dedupToken: params.insert_deduplication_token,
        bodyFailure: () => bodyState.failure,
        signal: aborted,
      });
      if (quorum && replicasNeeded > 1) {
        // A QUORUM_TIMEOUT carries the LSNs too: what the client may wait for on a read.
        reply.header('X-Chorus-LSN', result.lsns.join(','));
        const { replicas } = await deps.metrics.timed('origin', 'quorum', () => deps.quorum.wait(result.lsns, replicasNeeded, quorum.timeoutMs, aborted));
        reply.header('X-Chorus-Quorum', replicas.join(','));
      }
      const outcome = result.blocks > 0 && result.deduplicated === result.blocks ? 'deduplicated' : 'ok';
      deps.metrics.inserts.inc({ table: label, outcome });
      // What ClickHouse answers an INSERT with, which clients such as @clickhouse/client read.
      const summary = {
        read_rows: String(result.rows),
        read_bytes: String(result.bytes),
        written_rows: String(result.rows),
        written_bytes: String(result.bytes),
        total_rows_to_read: '0',
        result_rows: String(result.rows),
        result_bytes: String(result.bytes),
        elapsed_ns: String(process.hrtime.bigint() - started),
      };
      return reply
        .header('X-ClickHouse-Query-Id', params.query_id ?? randomUUID())
        .header('X-ClickHouse-Summary', JSON.stringify(summary))
        .header('X-Chorus-LSN', result.lsns.join(','))
        .header('X-Chorus-Deduplicated', result.deduplicated === 0 ? '0' : result.deduplicated === result.blocks ? '1' : 'partial')
        .header('X-Chorus-Blocks', String(result.blocks))
        .send('');
    } catch (err) {
      deps.metrics.inserts.inc({ table: label, outcome: 'error' });
      throw err;
    } finally {
      release();
      if (replicated) deps.metrics.observeStep('origin', 'request', startedAt);
    }
  };

  app.setErrorHandler(async (err, req, reply) => {
    const e = ChorusError.from(err);
    if (e.httpStatus >= 500) req.log.error({ err: e.message, code: e.qualifiedCode }, 'request failed');
    if (!req.raw.complete && !req.raw.destroyed) {
      // Most clients read no answer before they have sent the whole body: read (and drop) a
      // bounded amount of it so they see the error rather than a reset connection.
      reply.header('Connection', 'close');
      await drain(req.raw, DRAIN_BEFORE_ERROR_BYTES, 5000);
    }
    return sendError(reply, e);
  });

  /** Waits until every live replica has applied an entry (its LSN already answered in X-Chorus-LSN); `timedOut` says what a timeout means. */
  const everyLiveReplica = (reply: FastifyReply, signal: AbortSignal, timeoutMs: number, timedOut: (lsn: number) => ChorusError) => async (lsn: number) => {
    reply.header('X-Chorus-LSN', String(lsn));
    try {
      await deps.quorum.waitEveryLive([lsn], timeoutMs, signal);
    } catch (err) {
      if (ChorusError.from(err).code !== 'QUORUM_TIMEOUT') throw err;
      const e = timedOut(lsn);
      throw new ChorusError(e.code, `${e.message} (${(err as Error).message})`, err);
    }
  };

  /** A mutation of a replicated table becomes a log entry; true when handled. */
  const mutation = async (req: FastifyRequest, reply: FastifyReply, op: MutationOp): Promise<boolean> => {
    const params = new URL(req.url, 'http://x').searchParams;
    const database = op.database ?? sessionDatabase(req, params);
    if (!(await deps.pipeline.replicates(database, op.table))) return false;
    if (op.refusal) throw op.refusal;
    refuseGet(req);
    const sync = mutationsSync(params);
    const waitTimeoutMs = secondsParam(params, 'replication_wait_for_inactive_replica_timeout', 120);
    if (!deps.acceptingInserts()) throw new ChorusError('SHUTTING_DOWN', 'this replica is shutting down (or was decommissioned); send it to another replica');
    const signal = abortOnDisconnect(req, reply);
    const client = clientCredentials(req.headers, params);
    for (const grant of op.grants) await deps.grants.check(client, MUTATION_GRANTS[grant]!, database, op.table, signal);
    const waitEverywhere = everyLiveReplica(reply, signal, waitTimeoutMs, (lsn) => new ChorusError('MUTATION_TIMEOUT', `the mutation is recorded as LSN ${lsn} and done here, but not on every live replica within ${waitTimeoutMs} ms; it keeps running on every replica: do not send it again`));
    const lsn = await deps.pipeline.mutation({ op, database, sync, waitEverywhere, signal });
    await reply.header('X-Chorus-LSN', String(lsn)).send('');
    return true;
  };

  /** Whether Chorus replicates what `op` changes (its names qualified): a replicated database's own CREATE/DROP, a MergeTree-family table in one. */
  const governs = async (op: SchemaOp): Promise<boolean> => {
    switch (op.action) {
      case 'create_database':
      case 'drop_database':
        return deps.catalog.coversDatabase(op.database!);
      case 'create_table':
        if (!deps.catalog.coversDatabase(op.database!)) return false;
        if (op.engine !== undefined) return isReplicableEngine(op.engine);
        if (op.asTable) return deps.pipeline.replicates(op.asTable.database!, op.asTable.table);
        op.refusal ??= new ChorusError('NOT_REPLICATED_STATEMENT', `CREATE TABLE ${op.database}.${op.table} names no ENGINE: name it, so that every replica creates the same table`);
        return true;
      default:
        return deps.pipeline.replicates(op.database!, op.table);
    }
  };

  /** A schema change of a replicated database or table becomes a log entry; true when handled. */
  const schema = async (req: FastifyRequest, reply: FastifyReply, op: SchemaOp): Promise<boolean> => {
    const params = new URL(req.url, 'http://x').searchParams;
    const fallback = sessionDatabase(req, params);
    op.database ??= fallback;
    if (op.to) op.to.database ??= fallback;
    if (op.asTable) op.asTable.database ??= fallback;
    if (!(await governs(op))) return false;
    if (op.refusal) throw op.refusal;
    refuseGet(req);
    const timeoutMs = secondsParam(params, 'distributed_ddl_task_timeout', 180);
    if (!deps.acceptingInserts()) throw new ChorusError('SHUTTING_DOWN', 'this replica is shutting down (or was decommissioned); send it to another replica');
    const signal = abortOnDisconnect(req, reply);
    const client = clientCredentials(req.headers, params);
    const onTable = op.action === 'drop_table' || op.action === 'alter_table' || op.action === 'rename_table';
    for (const grant of op.grants) await deps.grants.check(client, { grant }, op.database!, onTable ? op.table : '*', signal);
    if (op.to) await deps.grants.check(client, { grant: 'CREATE TABLE' }, op.to.database!, '*', signal);
    const waitEverywhere = everyLiveReplica(reply, signal, timeoutMs, (lsn) => new ChorusError('SCHEMA_TIMEOUT', `the schema change is recorded as LSN ${lsn} and applied here, but not on every live replica within ${timeoutMs} ms; it keeps being applied on every replica: do not send it again`));
    const lsn = await deps.pipeline.schemaChange({ op, waitEverywhere, timeoutMs, signal });
    if (lsn > 0) reply.header('X-Chorus-LSN', String(lsn));
    await reply.send('');
    return true;
  };

  /** DROP PARTITION / TRUNCATE / mutations / schema changes of a replicated table become log entries; true when handled. */
  const tableOp = async (req: FastifyRequest, reply: FastifyReply, statement: string): Promise<boolean> => {
    const mutationOp = parseMutation(statement);
    if (mutationOp) return mutation(req, reply, mutationOp);
    const schemaOp = parseSchema(statement);
    if (schemaOp) return schema(req, reply, schemaOp);
    const op = parseTableOp(statement);
    if (!op) return false;
    const params = new URL(req.url, 'http://x').searchParams;
    const database = op.database ?? sessionDatabase(req, params);
    if (!(await deps.pipeline.replicates(database, op.table))) return false;
    refuseGet(req);
    if (!deps.acceptingInserts()) throw new ChorusError('SHUTTING_DOWN', 'this replica is shutting down (or was decommissioned); send it to another replica');
    await deps.grants.check(clientCredentials(req.headers, params), op.kind, database, op.table, abortOnDisconnect(req, reply));
    const lsn = await deps.pipeline.tableOp({ kind: op.kind, database, table: op.table, partition: op.kind === 'drop_partition' ? op.partition : '' });
    await reply.header('X-Chorus-LSN', String(lsn)).send('');
    return true;
  };

  /** Refuses a statement that would change a replicated table on this replica only. */
  const guard = async (req: FastifyRequest, statement: string): Promise<void> => {
    const write = findUnreplicatedWrite(statement);
    if (!write) return;
    const params = new URL(req.url, 'http://x').searchParams;
    const fallback = sessionDatabase(req, params);
    for (const t of write.tables) {
      const database = t.database ?? fallback;
      if (await deps.pipeline.replicates(database, t.table)) {
        throw new ChorusError(
          'NOT_REPLICATED_STATEMENT',
          `${write.statement} on ${database}.${t.table}: Chorus replicates this table and does not replicate this statement, which would change one replica only; Chorus replicates INSERT, ALTER TABLE ... DROP PARTITION <literal>, TRUNCATE TABLE <table>, ALTER TABLE ... UPDATE/DELETE/CLEAR COLUMN, DELETE FROM, CREATE/DROP/RENAME TABLE and ALTER TABLE column, index, setting and TTL changes (each kind alone, without ON CLUSTER). Stop writes and run it on every replica's ClickHouse directly (port 8123) if you must`,
        );
      }
    }
  };

  /**
   * X-Chorus-Wait-LSN: L holds the request until this replica has applied every LSN up to L (the
   * X-Chorus-LSN an insert answered with), so that a read sees that insert and all before it.
   */
  const awaitRequestedLsn = async (req: FastifyRequest, reply: FastifyReply) => {
    const wanted = header(req, 'x-chorus-wait-lsn');
    if (wanted === undefined) return;
    const lsn = Number(wanted.trim());
    if (!/^\d{1,15}$/.test(wanted.trim()) || lsn < 1) throw new ChorusError('BAD_SETTING', `X-Chorus-Wait-LSN: ${JSON.stringify(wanted.slice(0, 40))} is not an LSN`);
    const timeoutHeader = header(req, 'x-chorus-wait-timeout-ms');
    if (timeoutHeader !== undefined && !/^\d{1,9}$/.test(timeoutHeader.trim())) {
      throw new ChorusError('BAD_SETTING', `X-Chorus-Wait-Timeout-Ms: ${JSON.stringify(timeoutHeader.slice(0, 40))} is not a whole number of milliseconds`);
    }
    const timeoutMs = Math.min(timeoutHeader !== undefined ? Number(timeoutHeader.trim()) : config.http.lsnWaitTimeoutMs, config.http.requestTimeoutMs);
    if (!(await deps.waitAppliedThrough(lsn, timeoutMs, abortOnDisconnect(req, reply)))) {
      throw new ChorusError('LSN_WAIT_TIMEOUT', `this replica has not applied every LSN up to ${lsn} within ${timeoutMs} ms; nothing was run (ask again, or ask another replica)`);
    }
  };

  const root = async (req: FastifyRequest, reply: FastifyReply) => {
    await awaitRequestedLsn(req, reply);
    const query = new URL(req.url, 'http://x').searchParams.get('query');
    const contentLength = Number(req.headers['content-length'] ?? 0);
    if (contentLength > config.http.maxInsertBytes) {
      throw new ChorusError('REQUEST_TOO_LARGE', `request body of ${contentLength} bytes exceeds http.maxInsertBytes (${config.http.maxInsertBytes})`);
    }
    if (query !== null) {
      const parsed = parseInsert(query, { final: true });
      if (parsed.kind !== 'insert') {
        // A multipart body is external data for the query (ClickHouse's `_data` files), not a part of it.
        if (req.method === 'GET' || /^multipart\//i.test(header(req, 'content-type') ?? '')) {
          if (await tableOp(req, reply, query)) return;
          await guard(req, query);
          return proxy(req, reply, req.method === 'GET' ? null : req.raw);
        }
        // ClickHouse runs the parameter and the body as one statement (`?query=DELETE` with a
        // body `FROM t WHERE 1`): read both before deciding what it is.
        const bodyState = watchBody(req.raw, config.http.maxInsertBytes);
        const { head, ended } = await readHead(bodyState.stream, config.http.maxQueryBytes, Buffer.alloc(0));
        if (!ended) throw new ChorusError('REQUEST_TOO_LARGE', `a statement other than INSERT longer than http.maxQueryBytes (${config.http.maxQueryBytes})`);
        const statement = head.length ? `${query}\n${head.toString('utf8')}` : query;
        if (await tableOp(req, reply, statement)) return;
        await guard(req, statement);
        return proxy(req, reply, Readable.from([head]));
      }
      const settings = insertSettings(query, parsed.target.span[1], true);
      if (settings !== 'incomplete') checkStatementSettings(settings);
      // ClickHouse reads the body as the rest of the statement: a body could then hold a SELECT
      // (run with Chorus's rights) or SETTINGS that Chorus never saw.
      if (!insertClause(query, parsed.target.span[1])) {
        throw new ChorusError('BAD_QUERY', 'an INSERT in the query parameter must say how its data comes (FORMAT, VALUES or SELECT) there, not in the body');
      }
      const bodyState = watchBody(req.raw, config.http.maxInsertBytes);
      return insert(req, reply, parsed.target, query, bodyState.stream, bodyState, insertSelect(query, parsed.target.span[1]));
    }
    if (req.method !== 'POST') return proxy(req, reply, null);
    // The whole statement is in the body: read just enough of it to find the table.
    const bodyState = watchBody(req.raw, config.http.maxInsertBytes);
    let { head, ended } = await readHead(bodyState.stream, config.http.maxQueryBytes);
    const text = head.toString('latin1');
    const parsed = parseInsert(text, { final: ended || head.length >= config.http.maxQueryBytes });
    if (parsed.kind !== 'insert' && !ended) {
      // Anything but an INSERT is all statement: read it whole, so the guard sees all of it.
      ({ head, ended } = await readHead(bodyState.stream, config.http.maxQueryBytes, head));
      if (!ended) throw new ChorusError('REQUEST_TOO_LARGE', `a statement other than INSERT longer than http.maxQueryBytes (${config.http.maxQueryBytes})`);
    }
    const rest = (prefix: Buffer) => Readable.from(concatStreams(prefix, ended ? null : bodyState.stream));
    if (parsed.kind !== 'insert') {
      const statement = head.toString('utf8');
      if (await tableOp(req, reply, statement)) return;
      await guard(req, statement);
      return proxy(req, reply, rest(head));
    }
    // The latin1 scan gives byte offsets into `head`; names are read again from the UTF-8 text.
    const end = parsed.target.span[1];
    const final = ended || head.length >= config.http.maxQueryBytes;
    const settings = insertSettings(text, end, final);
    if (settings !== 'incomplete') checkStatementSettings(settings);
    if (!ended && insertSelect(text, end) !== undefined) {
      throw new ChorusError('REQUEST_TOO_LARGE', `an INSERT ... SELECT longer than http.maxQueryBytes (${config.http.maxQueryBytes})`);
    }
    const statement = head.subarray(0, end).toString('utf8');
    const reparsed = parseInsert(statement, { final: true });
    if (reparsed.kind !== 'insert') throw new ChorusError('BAD_QUERY', 'could not read the INSERT statement');
    // An INSERT ... SELECT in the body is whole here (a longer one was refused above).
    return insert(req, reply, reparsed.target, statement, rest(head.subarray(end)), bodyState, ended ? insertSelect(head.toString('utf8'), Buffer.byteLength(statement)) : undefined);
  };

  app.route({ method: ['GET', 'POST'], url: '/', handler: root });
  app.get('/ping', async () => 'Ok.\n');
  app.setNotFoundHandler((req, reply) => proxy(req, reply, req.method === 'GET' || req.method === 'HEAD' ? null : req.raw));
  app.addHook('onClose', async () => agent.destroy());
  // Shutting down, every answer closes its connection, so that no client sends its next request
  // on a connection the server is about to close (it would get a reset, not an answer).
  app.addHook('onSend', async (_req, reply) => {
    if (!deps.acceptingInserts()) reply.header('Connection', 'close');
  });
  // Node's close() destroys every connection without a request in progress at once, including
  // one a client has just opened or just sent a request on: that client gets a reset instead of
  // SHUTTING_DOWN. Such connections are served (and closed) instead; the truly idle ones are cut
  // a moment later.
  app.addHook('preClose', (done) => {
    const server = app.server;
    const closeIdle = server.closeIdleConnections.bind(server);
    server.closeIdleConnections = () => undefined;
    const timer = setTimeout(closeIdle, CLOSE_IDLE_AFTER_MS);
    timer.unref();
    server.once('close', () => clearTimeout(timer));
    done();
  });
  return app;
}

const DRAIN_BEFORE_ERROR_BYTES = 64 * 1024 * 1024;
const CLOSE_IDLE_AFTER_MS = 1000;

function drain(stream: http.IncomingMessage, maxBytes: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    let bytes = 0;
    const done = () => {
      clearTimeout(timer);
      stream.off('data', onData);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > maxBytes) done();
    };
    const timer = setTimeout(done, timeoutMs);
    stream.on('data', onData);
    stream.once('end', done);
    stream.once('close', done);
    stream.resume();
  });
}

/** ClickHouse runs a GET request read-only: a statement that changes a replicated table or database needs a POST through Chorus too. */
function refuseGet(req: FastifyRequest): void {
  if (req.method === 'GET') throw new ChorusError('BAD_QUERY', 'a statement that changes data or schema is sent with POST (ClickHouse runs GET requests read-only)');
}

/** `mutations_sync` from the URL, with ClickHouse's meaning (0: answer once recorded, 1: once done here, 2: once done on every live replica). */
function mutationsSync(params: URLSearchParams): 0 | 1 | 2 {
  const raw = params.get('mutations_sync');
  if (raw === null) return 0;
  const value = raw.trim().toLowerCase();
  if (value === '0' || value === 'false') return 0;
  if (value === '1' || value === 'true') return 1;
  if (value === '2') return 2;
  throw new ChorusError('BAD_SETTING', `mutations_sync=${JSON.stringify(raw.slice(0, 40))}: expected 0, 1 or 2`);
}

/**
 * A wait in whole seconds from the URL, as ClickHouse names it: `distributed_ddl_task_timeout`
 * (180 s) for a schema change, `replication_wait_for_inactive_replica_timeout` (120 s) for
 * mutations_sync=2. In milliseconds.
 */
function secondsParam(params: URLSearchParams, name: string, defaultSeconds: number): number {
  const raw = params.get(name);
  if (raw === null) return defaultSeconds * 1000;
  if (!/^\d{1,7}$/.test(raw.trim())) throw new ChorusError('BAD_SETTING', `${name}=${JSON.stringify(raw.slice(0, 40))}: expected a whole number of seconds`);
  return Number(raw.trim()) * 1000;
}

/** The database an unqualified table name is in, as ClickHouse decides it for the request. */
function sessionDatabase(req: FastifyRequest, params: URLSearchParams): string {
  return params.get('database') ?? header(req, 'x-clickhouse-database') ?? 'default';
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

interface BodyState {
  stream: Readable;
  failure: ChorusError | undefined;
}

/**
 * Wraps the request body: counts bytes against the limit, and notes when the client's body
 * ended early (connection closed before Content-Length or the last chunk), which must fail
 * the insert rather than commit a prefix of it.
 */
function watchBody(raw: http.IncomingMessage, limit: number): BodyState {
  let bytes = 0;
  const state: BodyState = { stream: undefined as never, failure: undefined };
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      if (bytes > limit) {
        state.failure = new ChorusError('REQUEST_TOO_LARGE', `request body exceeds http.maxInsertBytes (${limit} bytes)`);
        cb(state.failure);
        return;
      }
      cb(null, chunk);
    },
  });
  const truncated = () => {
    if (!raw.complete && !state.failure) {
      state.failure = new ChorusError('TRUNCATED_BODY', `the request body ended after ${bytes} bytes, before the end the client announced; nothing was inserted`);
      counter.destroy(state.failure);
    }
  };
  raw.on('aborted', truncated);
  raw.on('close', truncated);
  raw.on('error', truncated);
  raw.pipe(counter);
  state.stream = counter;
  return state;
}

/** Reads from the body until the INSERT's table reference is complete (or `max` bytes); leaves the rest unread. */
function readHead(stream: Readable, max: number, whole?: Buffer): Promise<{ head: Buffer; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = whole ? [whole] : [];
    let length = whole?.length ?? 0;
    const finish = (ended: boolean) => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      if (!ended) stream.pause();
      resolve({ head: Buffer.concat(chunks), ended });
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= max || (!whole && headComplete(Buffer.concat(chunks).toString('latin1')))) finish(false);
    };
    const onEnd = () => finish(true);
    const onError = (err: Error) => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      reject(err);
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
    if (whole) stream.resume();
  });
}

/** Aborted when the client goes away before its answer was sent: its staging insert and waits stop. */
function abortOnDisconnect(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableEnded) controller.abort(new ChorusError('TRUNCATED_BODY', 'the client disconnected before its answer'));
  };
  reply.raw.once('close', onClose);
  return controller.signal;
}

/** Whether `text` holds an INSERT's table reference and its own settings, or is no INSERT. */
function headComplete(text: string): boolean {
  try {
    const parsed = parseInsert(text, { final: false });
    if (parsed.kind === 'incomplete') return false;
    return parsed.kind === 'other' || insertSettings(text, parsed.target.span[1], false) !== 'incomplete';
  } catch {
    return true; // a malformed INSERT: read again as final, it gets its error there
  }
}

async function* concatStreams(prefix: Buffer, rest: Readable | null): AsyncGenerator<Buffer> {
  if (prefix.length) yield prefix;
  if (rest) for await (const chunk of rest) yield chunk as Buffer;
}
