import http from 'node:http';
import { Readable } from 'node:stream';
import { ChorusError } from '../core/errors.js';
import { Dialect } from './dialect.js';
import type { StepLabel } from '../metrics/metrics.js';

export interface ClickHouseTarget {
  url: string;
  user: string;
  password: string;
  requestTimeoutMs: number;
}

export class ClickHouseQueryError extends ChorusError {
  constructor(
    readonly clickhouseCode: number | undefined,
    message: string,
    /** The exception's name (`UNKNOWN_TABLE`), which releases since 21.11 put in the message. */
    readonly clickhouseName?: string,
    /** ClickHouse's HTTP answer as it was: what a client's refusal is returned with. */
    readonly answer?: { status: number; body: string },
  ) {
    super('CLICKHOUSE_ERROR', message);
  }
}

/**
 * ClickHouse error codes (src/Common/ErrorCodes.cpp) that blame the server's state, not the
 * rows or the statement: full or failing disk, memory, too many parts, too many queries, a
 * read-only table. An insert refused so is worth retrying; one refused for its data is not.
 */
const SERVER_SIDE_CODES = new Set([
  24, // CANNOT_WRITE_TO_OSTREAM
  75, // CANNOT_WRITE_TO_FILE_DESCRIPTOR
  76, // CANNOT_OPEN_FILE
  77, // CANNOT_CLOSE_FILE
  88, // CANNOT_TRUNCATE_FILE
  159, // TIMEOUT_EXCEEDED
  172, // CANNOT_CREATE_DIRECTORY
  173, // CANNOT_ALLOCATE_MEMORY
  202, // TOO_MANY_SIMULTANEOUS_QUERIES
  204, // CANNOT_FSYNC
  214, // CANNOT_STATVFS
  236, // ABORTED
  241, // MEMORY_LIMIT_EXCEEDED
  242, // TABLE_IS_READ_ONLY
  243, // NOT_ENOUGH_SPACE
  252, // TOO_MANY_PARTS
  275, // AIO_WRITE_ERROR
  394, // QUERY_WAS_CANCELLED
  400, // CANNOT_STAT
  425, // SYSTEM_ERROR
  439, // CANNOT_SCHEDULE_TASK
]);

/** What a Poco or std exception (codes 1000, 1001) says when the disk under ClickHouse fails. */
const SERVER_SIDE_TEXT = /no space left on device|cannot write file|disk quota exceeded|read-only file system/i;

/** TOO_MANY_PARTS also says the rows of one insert span too many partitions: the client's doing. */
const CLIENT_SIDE_TOO_MANY_PARTS = /too many partitions for single insert block/i;

/** True when ClickHouse refused a query for its own state (see SERVER_SIDE_CODES), not for what it was sent. */
export function isServerSideFailure(err: ClickHouseQueryError): boolean {
  const code = err.clickhouseCode;
  if (code === 252 && CLIENT_SIDE_TOO_MANY_PARTS.test(err.message)) return false;
  if (code !== undefined && SERVER_SIDE_CODES.has(code)) return true;
  // Only the text of an exception without a ClickHouse code: a parse error quotes the client's rows.
  return (code === undefined || code === 1000 || code === 1001) && SERVER_SIDE_TEXT.test(err.message);
}

/**
 * ClickHouse's error text, in the formats of every supported release:
 * 18.16 `Code: 60, e.displayText() = DB::Exception: Table x doesn't exist., e.what() = DB::Exception`,
 * 21.11+ `Code: 60. DB::Exception: Table x does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)`.
 * The `X-ClickHouse-Exception-Code` header, when given, is the code.
 */
export function parseClickHouseError(body: string, headerCode?: string): { code?: number; name?: string; message: string } {
  const text = body.replace(/\s+$/, '');
  const m = /Code: (\d+)/.exec(text);
  const code = headerCode && /^\d+$/.test(headerCode) ? Number(headerCode) : m ? Number(m[1]) : undefined;
  const message = text
    .replace(/^Code: \d+, e\.displayText\(\) = /, '')
    .replace(/^Code: \d+\. /, '')
    .replace(/, e\.what\(\) = [\w:]+$/, '')
    .replace(/ \(version [^)]*\)$/, '');
  return { code, name: exceptionName(message), message };
}

/** The exception's name, which releases since 21.11 put in parentheses at the end of the message. */
export function exceptionName(message: string): string | undefined {
  return /\(([A-Z][A-Z0-9_]+)\)\s*$/.exec(message)?.[1];
}

/**
 * An exception ClickHouse wrote into a 200 response after the first rows (the status was sent
 * already): a line starting `Code: N.` (every release) or the `__exception__` block of 24.11+.
 */
export function exceptionInBody(text: string): string | undefined {
  const tagged = /__exception__\r?\n(?:[^\n]*\r?\n)?(Code: \d+[^\n]*)/.exec(text);
  if (tagged) return tagged[1];
  const plain = /(?:^|\n)(Code: \d+[.,] [^\n]*DB::Exception[^\n]*)\s*$/.exec(text);
  return plain?.[1];
}

export interface ClickHouseCredentials {
  user: string;
  password: string;
}

const HEADER_SAFE = /^(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?$/;

/**
 * How a user's credentials are sent: ClickHouse's own headers, or, for a name or password a
 * header cannot carry as it is (non-ASCII, edge spaces), HTTP basic auth, whose base64 carries
 * any UTF-8 (ClickHouse reads both; a name with `:` cannot go in basic auth).
 */
export const credentialHeaders = (c: ClickHouseCredentials): Record<string, string> =>
  (HEADER_SAFE.test(c.user) && HEADER_SAFE.test(c.password)) || c.user.includes(':')
    ? { 'X-ClickHouse-User': c.user, 'X-ClickHouse-Key': c.password }
    : { Authorization: `Basic ${Buffer.from(`${c.user}:${c.password}`, 'utf8').toString('base64')}` };

export const quoteIdent = (name: string) => '`' + name.replace(/\\/g, '\\\\').replace(/`/g, '\\`') + '`';
/** `db`.`t`, or `t` alone when the statement left the database to the session. */
export const quoteQualified = (database: string | undefined, table: string) => (database === undefined ? quoteIdent(table) : `${quoteIdent(database)}.${quoteIdent(table)}`);
export const quoteString = (value: string) => "'" + value.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";

/**
 * The sidecar's own connection to its local ClickHouse, over ClickHouse's HTTP interface.
 * Raw node:http rather than @clickhouse/client because staging streams an arbitrary request
 * body in an arbitrary format straight through, which that client does not expose.
 */
export class ClickHouseHttp {
  private agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private base: URL;
  private detected: Dialect | undefined;

  constructor(
    private readonly target: ClickHouseTarget,
    /** Called once per query sent, with the insert step that sent it (undefined: outside the insert path). */
    private readonly onQuery: (step: StepLabel | undefined) => void = () => undefined,
  ) {
    this.base = new URL(target.url);
  }

  get url(): string {
    return this.target.url;
  }

  /** What this ClickHouse's version calls things; known once `detect()` has run (at start). */
  get dialect(): Dialect {
    if (!this.detected) throw new ChorusError('INTERNAL', 'the ClickHouse version is not known yet (detect() runs at start)');
    return this.detected;
  }

  /** Reads `version()` and keeps the dialect of that release. */
  async detect(): Promise<Dialect> {
    const version = (await this.request('SELECT version()')).trim();
    this.detected = new Dialect(version);
    return this.detected;
  }

  private authHeaders(): Record<string, string> {
    return credentialHeaders(this.target);
  }

  /** Sends `query` (and `body`, appended by ClickHouse to the query as its data); resolves with the response text. */
  request(
    query: string,
    opts: {
      body?: Readable | Buffer | string;
      params?: Record<string, string>;
      headers?: Record<string, string>;
      signal?: AbortSignal;
      /** Run as this ClickHouse user instead of Chorus's own (a client's rights checked by ClickHouse). */
      as?: ClickHouseCredentials;
      /** The insert step this query belongs to, for the per-step query count. */
      step?: StepLabel;
    } = {},
  ): Promise<string> {
    this.onQuery(opts.step);
    const url = new URL(this.base);
    for (const [k, v] of Object.entries(opts.params ?? {})) url.searchParams.set(k, v);
    // Last, so that no parameter can stand in for the statement.
    url.searchParams.set('query', query);
    return new Promise((resolve, reject) => {
      const req = http.request(
        url,
        { method: 'POST', agent: this.agent, headers: { ...opts.headers, ...(opts.as ? credentialHeaders(opts.as) : this.authHeaders()) }, timeout: this.target.requestTimeoutMs, signal: opts.signal },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const headerCode = res.headers['x-clickhouse-exception-code'];
            const late = res.statusCode === 200 ? exceptionInBody(text) : undefined;
            if (res.statusCode === 200 && !late) resolve(text);
            else {
              const { code, name, message } = parseClickHouseError(late ?? text, Array.isArray(headerCode) ? headerCode[0] : headerCode);
              reject(new ClickHouseQueryError(code, message || `ClickHouse answered HTTP ${res.statusCode}`, name, { status: res.statusCode ?? 500, body: late ?? text }));
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new ChorusError('CLICKHOUSE_UNAVAILABLE', `ClickHouse at ${this.target.url} timed out`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err instanceof ChorusError) reject(err);
        else if (err.name === 'AbortError') reject(err);
        else reject(new ChorusError('CLICKHOUSE_UNAVAILABLE', `ClickHouse at ${this.target.url} unreachable: ${err.code ?? err.message}`, err));
      });
      const body = opts.body;
      if (body === undefined) req.end();
      else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
      else {
        body.on('error', (err) => req.destroy(err));
        body.pipe(req);
      }
    });
  }

  exec(sql: string, opts: { step?: StepLabel } = {}): Promise<string> {
    return this.request(sql, opts);
  }

  async rows<T>(sql: string, opts: { step?: StepLabel } = {}): Promise<T[]> {
    const text = await this.request(`${sql} FORMAT JSONEachRow`, { params: { output_format_json_quote_64bit_integers: '0' }, step: opts.step });
    return text
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as T);
  }

  async ping(): Promise<boolean> {
    try {
      await this.request('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    this.agent.destroy();
  }
}
