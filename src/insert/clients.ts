import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { ClickHouseQueryError, quoteIdent, type ClickHouseCredentials, type ClickHouseHttp } from '../clickhouse/http.js';
import { ChorusError } from '../core/errors.js';

/**
 * A client's ClickHouse credentials, read the ways ClickHouse's HTTP interface reads them:
 * `X-ClickHouse-User`/`X-ClickHouse-Key`, then HTTP basic auth, then `user`/`password` URL
 * parameters; none is ClickHouse's `default` user with no password, as ClickHouse itself does.
 */
export function clientCredentials(headers: IncomingHttpHeaders, params: URLSearchParams): ClickHouseCredentials {
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);
  const user = first(headers['x-clickhouse-user']);
  if (user !== undefined) return { user, password: first(headers['x-clickhouse-key']) ?? '' };
  const auth = first(headers.authorization);
  const basic = auth && /^Basic\s+(\S+)/i.exec(auth);
  if (basic) {
    const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    return colon < 0 ? { user: decoded, password: '' } : { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  return { user: params.get('user') ?? 'default', password: params.get('password') ?? '' };
}

/** ClickHouse's refusal of a client, returned to it as ClickHouse gave it (status, code, text). */
export class ClickHouseRefusal extends ChorusError {
  constructor(
    readonly status: number,
    readonly clickhouseCode: number | undefined,
    readonly body: string,
  ) {
    super('CLICKHOUSE_REFUSED', body.trim());
  }
}

import type { GrantAction } from '../clickhouse/dialect.js';
export type { GrantAction };

/**
 * Whether a client's ClickHouse user may do an action to a table, asked of ClickHouse as that
 * user with a statement that changes nothing (Dialect.grantProbe), never from a copy of its
 * grants. A positive answer is kept for `cacheMs` per user, password hash, table and action:
 * the probe is one more round trip per insert (about 1 ms on 18.16, measured as the cost of a
 * `SELECT 1`), and a grant revoked is then honoured within `cacheMs`.
 */
export class GrantChecker {
  private granted = new Map<string, number>();

  constructor(
    private readonly ch: ClickHouseHttp,
    private readonly cacheMs: number,
  ) {}

  /**
   * The SELECT of an INSERT ... SELECT runs inside the staging insert, with Chorus's own
   * ClickHouse user: the client must be allowed to run it itself. `EXPLAIN` as the client
   * checks its rights on every table and table function the SELECT names without reading
   * anything; a release without EXPLAIN (before 20.6) cannot be asked, and such an insert is
   * refused.
   */
  async checkSelect(client: ClickHouseCredentials, select: string, signal?: AbortSignal): Promise<void> {
    if (!this.ch.dialect.hasExplain) {
      throw new ChorusError(
        'NOT_REPLICATED_STATEMENT',
        `INSERT ... SELECT through Chorus needs ClickHouse 20.6 or later (${this.ch.dialect.version} cannot check the SELECT against your user's rights without running it); run the SELECT yourself and send its rows with INSERT ... FORMAT`,
      );
    }
    try {
      await this.ch.request(`EXPLAIN ${select}`, { as: client, body: '', signal });
    } catch (err) {
      if (err instanceof ClickHouseQueryError && err.answer) throw new ClickHouseRefusal(err.answer.status, err.clickhouseCode, err.answer.body);
      throw err;
    }
  }

  async check(client: ClickHouseCredentials, action: GrantAction, database: string, table: string, signal?: AbortSignal): Promise<void> {
    const key = [client.user, createHash('sha256').update(client.password).digest('hex'), database, table, typeof action === 'string' ? action : action.grant].join('\0');
    const until = this.granted.get(key);
    if (until !== undefined && until > Date.now()) return;
    this.granted.delete(key);
    // table '*': the whole database (a table to create, the database itself).
    const qualified = table === '*' ? `${quoteIdent(database)}.*` : `${quoteIdent(database)}.${quoteIdent(table)}`;
    for (const probe of this.ch.dialect.grantProbes(action, qualified, client.user)) {
      let answer: string;
      try {
        answer = await this.ch.request(probe.sql, { as: client, body: '', signal, step: { step: 'grants', role: 'origin' } });
      } catch (err) {
        if (err instanceof ClickHouseQueryError && err.answer) throw new ClickHouseRefusal(err.answer.status, err.clickhouseCode, err.answer.body);
        throw err;
      }
      if (probe.granted !== undefined && answer.trim() !== probe.granted) {
        // The probe reports rather than fails: say what ClickHouse says when the statement itself is refused.
        const r = probe.refusal ?? { status: 403, code: 497, text: `Code: 497. DB::Exception: ${client.user}: Not enough privileges. (ACCESS_DENIED)` };
        throw new ClickHouseRefusal(r.status, r.code, `${r.text}\n`);
      }
    }
    if (this.cacheMs > 0) {
      if (this.granted.size > 10_000) this.granted.clear();
      this.granted.set(key, Date.now() + this.cacheMs);
    }
  }
}
