import { isUtf8 } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { quoteIdent, quoteString } from '../../clickhouse/http.js';
import { Semaphore } from '../../core/async.js';
import { FRONT_ERRORS, httpException, type HttpException } from './errors.js';

/** The part of chdb's Session this front uses (chdb is a dev dependency, loaded by main.ts). */
export interface ChdbSession {
  queryAsync(sql: string, opts?: { format?: string }): Promise<ChdbResult>;
  queryBindAsync(sql: string, params: object, opts?: { format?: string }): Promise<ChdbResult>;
  close(): void;
}
interface ChdbResult {
  readonly elapsed: number;
  readonly rowsRead: number;
  readonly bytesRead: number;
  bytes(): Uint8Array;
}
interface ChdbError extends Error {
  clickhouseCode?: number;
}

export interface FrontOptions {
  host: string;
  port: number;
  /** Where bodies that are not text are spooled for `FROM INFILE`. */
  tmpDir: string;
  /** The one user this front knows: `default` with this password. */
  password: string;
  /** Settings a server would have by default where chdb's engine differs (chdb turns async_insert on). */
  serverDefaults: Record<string, string>;
}

const UNKNOWN_VALUE = '\u0000unknown';

/**
 * Settings a session cannot undo once set (readonly refuses every later SET): a server applies
 * them to one query; this front, which shares one session between requests, refuses them.
 */
const UNDOABLE = new Set(['readonly']);

/** URL parameters ClickHouse's HTTP interface reads itself; every other one is a setting. */
const NOT_SETTINGS = new Set([
  'query', 'database', 'default_format', 'user', 'password', 'quota_key', 'query_id', 'session_id', 'session_timeout',
  'session_check', 'close_session', 'compress', 'decompress', 'buffer_size', 'wait_end_of_query', 'stacktrace', 'role',
  'client_protocol_version', 'enable_http_compression',
]);

const decoders: Record<string, (b: Buffer) => Promise<Buffer>> = {
  gzip: promisify(zlib.gunzip),
  'x-gzip': promisify(zlib.gunzip),
  deflate: promisify(zlib.inflate),
  br: promisify(zlib.brotliDecompress),
};

class FrontError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

function contentTypeOf(format: string): string {
  if (/^JSON/i.test(format)) return 'application/json; charset=UTF-8';
  if (/^(TabSeparated|TSV)/i.test(format)) return 'text/tab-separated-values; charset=UTF-8';
  if (/^CSV/i.test(format)) return 'text/csv; charset=UTF-8; header=absent';
  if (/^(RowBinary|Native|Parquet|Arrow|ORC|Avro|MsgPack|Protobuf)/i.test(format)) return 'application/octet-stream';
  return 'text/plain; charset=UTF-8';
}

/**
 * ClickHouse's HTTP interface in front of one chdb session, for the dev cluster and the tests:
 * the subset Chorus and its clients use. chdb runs one query at a time per session, so a
 * request's body is read whole before its query takes the engine (a slow client never holds
 * it), and each request's settings and database are applied and undone inside its turn.
 */
export class ChdbFront {
  private server: http.Server | null = null;
  /** The engine runs one query at a time: one request holds it from its settings to its answer. */
  private readonly engine = new Semaphore(1);
  /** Settings that the previous request left different from the server defaults. */
  private applied = new Map<string, string>();
  private database = 'default';
  private spooled = 0;

  constructor(
    private readonly session: ChdbSession,
    readonly version: string,
    private readonly opts: FrontOptions,
  ) {}

  /** Makes the session look like a fresh server's: an Atomic `default` database, server defaults. */
  async init(): Promise<void> {
    const [engine] = (await this.run('SELECT engine FROM system.databases WHERE name = \'default\'')).split('\n');
    if (engine !== 'Atomic') {
      const tables = Number((await this.run("SELECT count() FROM system.tables WHERE database = 'default'")).trim());
      if (tables === 0) {
        await this.run('DROP DATABASE IF EXISTS default');
        await this.run('CREATE DATABASE default ENGINE = Atomic');
      }
    }
    for (const [name, value] of Object.entries(this.opts.serverDefaults)) await this.run(`SET ${name} = ${literal(value)}`);
  }

  listen(): Promise<number> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    this.server.keepAliveTimeout = 10_000;
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.port, this.opts.host, () => {
        const address = this.server!.address();
        resolve(typeof address === 'object' && address ? address.port : this.opts.port);
      });
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
    // Every request that took a turn before this one is done with the engine after it.
    await this.engine.run(async () => undefined);
  }

  private async run(sql: string, format = 'TabSeparated'): Promise<string> {
    return Buffer.from((await this.session.queryAsync(sql, { format })).bytes()).toString('utf8');
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://front');
    const queryId = url.searchParams.get('query_id') ?? randomUUID();
    res.setHeader('X-ClickHouse-Server-Display-Name', 'chdb-front');
    res.setHeader('X-ClickHouse-Query-Id', queryId);
    res.setHeader('X-ClickHouse-Timezone', 'UTC');
    try {
      if (url.pathname === '/ping' || url.pathname === '/replicas_status' || (url.pathname === '/' && req.method === 'GET' && !url.searchParams.has('query'))) {
        req.resume();
        res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8' }).end('Ok.\n');
        return;
      }
      if (url.pathname !== '/') throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, `There is no handle ${url.pathname} (NOT_IMPLEMENTED)`);
      this.authenticate(req, url);
      if (url.searchParams.get('decompress') === '1' || url.searchParams.get('compress') === '1') {
        throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, "ClickHouse's native compression of HTTP bodies is not served by the chdb front (NOT_IMPLEMENTED)");
      }
      const body = await readBody(req);
      await this.answer(req, res, url, body);
    } catch (err) {
      this.fail(res, err);
    }
  }

  private authenticate(req: http.IncomingMessage, url: URL): void {
    let user = header(req, 'x-clickhouse-user') ?? url.searchParams.get('user') ?? 'default';
    let password = header(req, 'x-clickhouse-key') ?? url.searchParams.get('password') ?? '';
    const basic = /^Basic (.+)$/i.exec(header(req, 'authorization') ?? '');
    if (basic) {
      const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      user = decoded.slice(0, colon < 0 ? undefined : colon);
      password = colon < 0 ? '' : decoded.slice(colon + 1);
    }
    if (user !== 'default' || password !== this.opts.password) {
      throw new FrontError(FRONT_ERRORS.AUTHENTICATION_FAILED, `${user}: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)`);
    }
  }

  private async answer(req: http.IncomingMessage, res: http.ServerResponse, url: URL, rawBody: Buffer): Promise<void> {
    const encoding = header(req, 'content-encoding')?.toLowerCase();
    let body = rawBody;
    if (encoding && encoding !== 'identity' && rawBody.length > 0) {
      const decode = decoders[encoding];
      if (!decode) throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, `Unknown Content-Encoding ${encoding} (NOT_IMPLEMENTED)`);
      body = await decode(rawBody);
    }
    const settings: Record<string, string> = {};
    const bound: Record<string, string> = {};
    for (const [k, v] of url.searchParams) {
      if (k.startsWith('param_')) bound[k.slice('param_'.length)] = v;
      else if (UNDOABLE.has(k)) throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, `the chdb front does not take the setting ${k} (NOT_IMPLEMENTED)`);
      else if (!NOT_SETTINGS.has(k)) settings[k] = v;
    }
    // One session serves every request: a statement that changes the session would outlive it.
    if (/^\s*(SET|USE)\b/i.test(url.searchParams.get('query') ?? body.subarray(0, 64).toString('latin1'))) {
      throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, 'SET and USE need an HTTP session, which the chdb front does not serve; pass settings and database as URL parameters (NOT_IMPLEMENTED)');
    }
    let param = url.searchParams.get('query');
    if (param === null && !isUtf8(body)) {
      // The whole statement in the body, binary rows after it: split at the end of `FORMAT name`.
      const head = /^(\s*INSERT\b[\s\S]*?\bFORMAT\s+\w+)[ \t]*\r?\n?/i.exec(body.subarray(0, 64 * 1024).toString('latin1'));
      if (head) {
        param = body.subarray(0, head[1]!.length).toString('utf8');
        body = body.subarray(head[0].length);
      }
    }
    let sql: string;
    let infile: string | null = null;
    if (param === null) {
      sql = body.toString('utf8');
    } else if (body.length === 0) {
      sql = param;
    } else if (isUtf8(body) && !body.includes(0)) {
      // ClickHouse reads the query parameter, a newline, then the body, as one statement.
      sql = `${param}\n${body.toString('utf8')}`;
    } else {
      // Binary rows cannot travel inside a query string: chdb reads them from a file.
      // INSERT INTO t [(cols)] FROM INFILE 'f' [SETTINGS ...] FORMAT name: INFILE goes before SETTINGS.
      const m = /^([\s\S]*?)(\s+SETTINGS\s+[\s\S]*?)?\s+FORMAT\s+(\w+)\s*$/i.exec(param);
      if (!m) throw new FrontError(FRONT_ERRORS.NOT_IMPLEMENTED, 'a binary body needs a query that ends with FORMAT <name> (NOT_IMPLEMENTED)');
      infile = join(this.opts.tmpDir, `body-${process.pid}-${this.spooled++}`);
      writeFileSync(infile, body);
      sql = `${m[1]} FROM INFILE ${quoteString(infile)}${m[2] ?? ''} FORMAT ${m[3]}`;
    }
    if (!sql.trim()) throw new FrontError(62, 'Syntax error: Empty query. (SYNTAX_ERROR)');
    const database = url.searchParams.get('database') ?? header(req, 'x-clickhouse-database') ?? 'default';
    const format = url.searchParams.get('default_format') ?? header(req, 'x-clickhouse-format') ?? 'TabSeparated';
    const started = process.hrtime.bigint();
    try {
      const result = await this.engine.run(async () => {
        await this.prepare(settings, database);
        return Object.keys(bound).length > 0 ? this.session.queryBindAsync(sql, bound, { format }) : this.session.queryAsync(sql, { format });
      });
      const out = Buffer.from(result.bytes());
      const shown = /\bFORMAT\s+(\w+)\s*;?\s*$/i.exec(sql)?.[1] ?? format;
      const summary = {
        read_rows: String(result.rowsRead),
        read_bytes: String(result.bytesRead),
        written_rows: '0',
        written_bytes: '0',
        total_rows_to_read: String(result.rowsRead),
        result_rows: '0',
        result_bytes: String(out.length),
        elapsed_ns: String(process.hrtime.bigint() - started),
      };
      res.setHeader('X-ClickHouse-Format', shown);
      res.setHeader('X-ClickHouse-Summary', JSON.stringify(summary));
      res.setHeader('Content-Type', contentTypeOf(shown));
      const gzip = url.searchParams.get('enable_http_compression') === '1' && /\bgzip\b/.test(header(req, 'accept-encoding') ?? '');
      if (gzip) {
        const packed = zlib.gzipSync(out);
        res.writeHead(200, { 'Content-Encoding': 'gzip', 'Content-Length': packed.length }).end(packed);
      } else res.writeHead(200, { 'Content-Length': out.length }).end(out);
    } finally {
      if (infile) rmSync(infile, { force: true });
    }
  }

  /** Brings the session's settings and current database to what this request asks. */
  private async prepare(settings: Record<string, string>, database: string): Promise<void> {
    for (const [name, value] of Object.entries(settings)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new FrontError(FRONT_ERRORS.UNKNOWN_SETTING, `Unknown setting ${name} (UNKNOWN_SETTING)`);
      if (this.applied.get(name) === value) continue;
      // Until the SET succeeds the value is unknown: a later request resets it either way.
      this.applied.set(name, UNKNOWN_VALUE);
      await this.run(`SET ${name} = ${literal(value)}`);
      this.applied.set(name, value);
    }
    for (const name of [...this.applied.keys()]) {
      if (name in settings) continue;
      const serverDefault = this.opts.serverDefaults[name];
      await this.run(`SET ${name} = ${serverDefault === undefined ? 'DEFAULT' : literal(serverDefault)}`);
      this.applied.delete(name);
    }
    if (database !== this.database) {
      await this.run(`USE ${quoteIdent(database)}`);
      this.database = database;
    }
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    let e: HttpException;
    if (err instanceof FrontError) e = httpException(err.code, err.message, this.version);
    else {
      const chdb = err as ChdbError;
      const code = chdb.clickhouseCode ?? Number(/^Code: (\d+)/.exec(chdb.message ?? '')?.[1] ?? FRONT_ERRORS.UNKNOWN_EXCEPTION);
      e = httpException(code, chdb.message ?? String(err), this.version);
    }
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(e.status, { 'Content-Type': 'text/plain; charset=UTF-8', 'X-ClickHouse-Exception-Code': String(e.code) }).end(e.body);
  }
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
    req.on('aborted', () => reject(new FrontError(FRONT_ERRORS.BAD_ARGUMENTS, 'the client closed the connection before the end of the body (BAD_ARGUMENTS)')));
  });
}

/** A setting value as SQL: numbers as they are, anything else as a string literal. */
function literal(value: string): string {
  return /^-?\d+(\.\d+)?$/.test(value) ? value : quoteString(value);
}
