import type { HttpOutcome } from './backend.js';
import type { Outcome } from './checker.js';

/*
 * What one try of an insert or a drop tells about its effect, Jepsen-style: `ok` only when
 * Chorus acknowledged it, `failed` only when nothing can have been stored, `unknown` otherwise.
 * A `failed` that did store something makes the checker report an unexpected row, so a code is
 * listed here only when every place in src/ that raises it does so before the insert's intent is
 * recorded (before any LSN is allocated); everything else, and every reply without a Chorus
 * code (a proxy's or fastify's own error), is unknown.
 */

/** Chorus error codes (without the CHORUS_ prefix of the header) raised only before anything is recorded. */
export const REFUSED_BEFORE_ANY_EFFECT: ReadonlyMap<string, string> = new Map([
  // parse.ts, server.ts (malformed HTTP, an INSERT without FORMAT), partition.ts (a partition
  // literal), pipeline.tableOp's check of the partition on an empty staging table: all before an
  // LSN is allocated.
  ['BAD_QUERY', 'refused while reading the statement, before any LSN is allocated'],
  // pipeline.insert: ClickHouse refused the staging insert; the staging table is emptied and no intent was recorded.
  ['BAD_DATA', 'ClickHouse refused the rows in staging, before the intent'],
  // pipeline.insert, also when ClickHouse answered but its staged part is incomplete (18.16 on a
  // full disk); pipeline.tableOp's partition check when ClickHouse failed for its own state.
  ['CLICKHOUSE_CANNOT_STORE', 'ClickHouse refused the rows in staging for its own state (disk full), or left their part incomplete; before the intent'],
  ['UNSUPPORTED_SETTING', 'refused from the statement text (settings.ts), before staging'],
  ['REQUEST_TOO_LARGE', 'refused from Content-Length or while reading the body, before the intent'],
  ['NOT_REPLICATED_STATEMENT', 'refused by the guard (server.ts) or checkSelect (clients.ts), before staging'],
  // catalog.resolve is the first step of pipeline.insert and pipeline.tableOp.
  ['UNKNOWN_TABLE', 'the catalog does not know the table: refused before staging'],
  ['NOT_REPLICATED_TABLE', 'the catalog does not replicate the table: refused before staging'],
  // GrantChecker.check runs before pipeline.insert / tableOp; ClickHouse's answer to the probe.
  ['CLICKHOUSE_REFUSED', "ClickHouse refused the client's user in the grant probe, before staging"],
  // The body ended early: the pipeline checks this right after staging, before the intent,
  // and throws it; the reply says "nothing was inserted".
  ['TRUNCATED_BODY', 'the body ended early; checked before the intent'],
]);

/*
 * Deliberately unknown, though they may look like refusals:
 * - SHUTTING_DOWN: server.ts raises it before the pipeline, but the allocator also raises it
 *   when stopped in the middle of an allocation whose write may have landed.
 * - ALLOCATOR_UNAVAILABLE: the same code says "nothing was allocated" and "whether it landed is unknown".
 * - REQUEST_TIMEOUT: sent by Node's HTTP layer while the handler may be running; its effect
 *   depends on when the handler noticed, which the reply does not tell.
 * - DUPLICATE_PENDING / DUPLICATE_OF_VOIDED / ORDERING_PENDING / ATTACH_FAILED / CLICKHOUSE_UNAVAILABLE /
 *   LOG_CONFLICT / INTERNAL: raised after the intent, or from several steps.
 * - NOT_READY: only /readyz answers it; an insert never should.
 */

export interface ClassifiedAttempt {
  outcome: Outcome;
  /** For the history and the report: the status and code, or the transport error. */
  detail: string;
}

/** The Chorus code of a reply, without the CHORUS_ prefix the header carries. */
export function chorusCode(errorCode: string | null): string | null {
  if (errorCode === null) return null;
  return errorCode.startsWith('CHORUS_') ? errorCode.slice('CHORUS_'.length) : errorCode;
}

export function classify(result: HttpOutcome): ClassifiedAttempt {
  if (result.kind === 'no-reply') {
    return result.sent ? { outcome: 'unknown', detail: `no reply: ${result.error}` } : { outcome: 'failed', detail: `not sent: ${result.error}` };
  }
  if (result.status === 200) return { outcome: 'ok', detail: '200' };
  const code = chorusCode(result.errorCode);
  const detail = `${result.status} ${code ?? result.body.trim().slice(0, 120)}`;
  return { outcome: code !== null && REFUSED_BEFORE_ANY_EFFECT.has(code) ? 'failed' : 'unknown', detail };
}
