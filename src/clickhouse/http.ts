import http from 'node:http';
import { Readable } from 'node:stream';
import { ChorusError } from '../core/errors.js';

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
  ) {
    super('CLICKHOUSE_ERROR', message);
  }
}

/** ClickHouse answers errors as text beginning `Code: N, e.displayText() = DB::Exception: ...`. */
export function parseClickHouseError(body: string): { code?: number; message: string } {
  const m = /Code: (\d+)/.exec(body);
  const text = body.replace(/\s+$/, '').replace(/^Code: \d+, e\.displayText\(\) = /, '');
  return { code: m ? Number(m[1]) : undefined, message: text.replace(/ \(version [^)]*\)$/, '') };
}

export const quoteIdent = (name: string) => '`' + name.replace(/\\/g, '\\\\').replace(/`/g, '\\`') + '`';
export const quoteString = (value: string) => "'" + value.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";

/**
 * The sidecar's own connection to its local ClickHouse, over ClickHouse's HTTP interface.
 * Raw node:http rather than @clickhouse/client because staging streams an arbitrary request
 * body in an arbitrary format straight through, which that client does not expose.
 */
export class ClickHouseHttp {
  private agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private base: URL;

  constructor(private readonly target: ClickHouseTarget) {
    this.base = new URL(target.url);
  }

  get url(): string {
    return this.target.url;
  }

  private authHeaders(): Record<string, string> {
    return { 'X-ClickHouse-User': this.target.user, 'X-ClickHouse-Key': this.target.password };
  }

  /** Sends `query` (and `body`, appended by ClickHouse to the query as its data); resolves with the response text. */
  request(
    query: string,
    opts: { body?: Readable | Buffer | string; params?: Record<string, string>; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<string> {
    const url = new URL(this.base);
    url.searchParams.set('query', query);
    for (const [k, v] of Object.entries(opts.params ?? {})) url.searchParams.set(k, v);
    return new Promise((resolve, reject) => {
      const req = http.request(
        url,
        { method: 'POST', agent: this.agent, headers: { ...opts.headers, ...this.authHeaders() }, timeout: this.target.requestTimeoutMs, signal: opts.signal },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (res.statusCode === 200) resolve(text);
            else {
              const { code, message } = parseClickHouseError(text);
              reject(new ClickHouseQueryError(code, message || `ClickHouse answered HTTP ${res.statusCode}`));
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

  exec(sql: string): Promise<string> {
    return this.request(sql);
  }

  async rows<T>(sql: string): Promise<T[]> {
    const text = await this.request(`${sql} FORMAT JSONEachRow`, { params: { output_format_json_quote_64bit_integers: '0' } });
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
