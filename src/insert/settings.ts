import { ChorusError } from '../core/errors.js';

/** URL parameters that are Chorus's to honour, or about the client's session, not the staging insert's. */
const NOT_PASSED_TO_STAGING = new Set([
  'query',
  'database',
  'user',
  'password',
  'quota_key',
  'insert_deduplication_token',
  'insert_quorum',
  'insert_quorum_timeout',
  'insert_quorum_parallel',
  'session_id',
  'session_timeout',
  'session_check',
  'default_format',
  'enable_http_compression',
  'wait_end_of_query',
  'send_progress_in_http_headers',
]);

/**
 * Settings that decide whether a staging insert leaves exactly its rows' parts in the staging
 * table when it answers: an asynchronous insert answers before writing any (the client would
 * get a 200 for nothing, and a later insert would find the parts), deduplication inside the
 * staging table (a copied `non_replicated_deduplication_window`) would drop a legitimate
 * retry's part. From the URL they are overridden: Chorus's insert is synchronous and
 * deduplicated by the shard's window, whatever was asked (Dialect.stagingSettings sets them
 * where the release knows them). Inside the statement (`SETTINGS ...`, which overrides the URL)
 * they are refused.
 */
const STAGING_CONTROLLED = new Set(['async_insert', 'wait_for_async_insert', 'async_insert_deduplicate', 'insert_deduplicate', 'insert_deduplication_token']);

/** The client's URL parameters that reach the staging insert, with Chorus's own settings last (they win). */
export function stagingParams(params: URLSearchParams | Record<string, string>, forced: Record<string, string>): Record<string, string> {
  const entries = params instanceof URLSearchParams ? [...params.entries()] : Object.entries(params);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) if (!NOT_PASSED_TO_STAGING.has(k) && !STAGING_CONTROLLED.has(k)) out[k] = v;
  return { ...out, ...forced };
}

/** Settings Chorus honours itself, read from the URL only: ClickHouse would ignore them on the staging table. */
const HONOURED_FROM_URL = new Set(['insert_quorum', 'insert_quorum_timeout', 'insert_quorum_parallel']);

/** Refuses a statement that sets, in its own text, a setting Chorus controls on staging. */
export function checkStatementSettings(names: string[]): void {
  const quorum = names.filter((n) => HONOURED_FROM_URL.has(n.toLowerCase()));
  if (quorum.length > 0) {
    throw new ChorusError(
      'UNSUPPORTED_SETTING',
      `the INSERT sets ${[...new Set(quorum)].join(', ')} in its text; Chorus waits for the quorum itself and reads these settings from the URL only (?insert_quorum=2&insert_quorum_timeout=...), as ClickHouse clients send them`,
    );
  }
  const bad = names.filter((n) => STAGING_CONTROLLED.has(n.toLowerCase()));
  if (bad.length === 0) return;
  throw new ChorusError(
    'UNSUPPORTED_SETTING',
    `the INSERT sets ${[...new Set(bad)].join(', ')} in its text; Chorus inserts synchronously and deduplicates through the shard's window, so these are not taken from a statement (pass insert_deduplication_token as a URL parameter)`,
  );
}
