/**
 * The one error type of Chorus. `code` is stable: clients, scripts and tests match on it,
 * so a code is never renamed once released; the message is for humans and may change.
 */
export const ErrorCodes = {
  UNKNOWN_TABLE: 404,
  NOT_REPLICATED_TABLE: 400,
  BAD_QUERY: 400,
  BAD_DATA: 400,
  TRUNCATED_BODY: 400,
  REQUEST_TOO_LARGE: 413,
  /** The request (headers and body) did not arrive within http.requestTimeoutMs. */
  REQUEST_TIMEOUT: 408,
  BAD_PART_NAME: 400,
  PART_NOT_FOUND: 404,
  PART_VERIFICATION_FAILED: 502,
  CLICKHOUSE_UNAVAILABLE: 503,
  /** ClickHouse refused rows for a reason of its own (disk full, memory, too many parts): nothing stored; retry later. */
  CLICKHOUSE_CANNOT_STORE: 503,
  CLICKHOUSE_ERROR: 502,
  ALLOCATOR_UNAVAILABLE: 503,
  DUPLICATE_PENDING: 503,
  DUPLICATE_OF_VOIDED: 503,
  /**
   * The dedup window keeps 64 bits of a block ID's hash; this block matched another block's.
   * Nothing was stored; sending it with an insert_deduplication_token stores it.
   */
  DEDUP_HASH_COLLISION: 409,
  ORDERING_PENDING: 503,
  CLONE_INTERRUPTED: 500,
  UNAUTHENTICATED: 401,
  FAILED_PRECONDITION: 409,
  NOT_FOUND: 404,
  ATTACH_FAILED: 500,
  SHUTTING_DOWN: 503,
  /** /readyz: this replica is not ready to serve (lagging, ClickHouse or ZooKeeper unreachable). */
  NOT_READY: 503,
  CONFIG_INVALID: 500,
  FILESYSTEM_MISMATCH: 500,
  STORAGE_UNSUPPORTED: 400,
  PEER_UNAVAILABLE: 503,
  /** A log entry received from a peer failed validation; nothing of it was stored. */
  INVALID_ENTRY: 400,
  /** A gossip message claims a sender other than the one its transport proves. */
  PERMISSION_DENIED: 403,
  /** Two different entries for one LSN: the log of the shard is inconsistent. */
  LOG_CONFLICT: 500,
  /** ClickHouse refused the client's user (credentials or rights); the reply carries ClickHouse's own status and text. */
  CLICKHOUSE_REFUSED: 403,
  /** A statement that would change a replicated table on this replica only. */
  NOT_REPLICATED_STATEMENT: 400,
  /**
   * A mutation whose result could differ between replicas (a non-deterministic function such as
   * now() or rand(), a subquery): every replica runs it on its own rows, so it is refused.
   */
  NONDETERMINISTIC_MUTATION: 400,
  /** The local ClickHouse release cannot run this statement (lightweight DELETE on 18.16): nothing was done. */
  UNSUPPORTED_BY_CLICKHOUSE: 400,
  /**
   * A mutation the client waited for (mutations_sync) failed on this replica's ClickHouse. It
   * stays in the log: ClickHouse retries it, and every replica runs it.
   */
  MUTATION_FAILED: 500,
  /**
   * A mutation's or schema change's allocation failed in a way that leaves unknown whether it
   * landed: if it did, recovery records it and every replica runs it. Not retryable: look at
   * `chorus entries` first, since a mutation or an ALTER sent twice runs twice.
   */
  STATEMENT_OUTCOME_UNKNOWN: 500,
  /** A schema change is recorded and applied in LSN order on every replica, but failed on this one (retried; see chorus entries). */
  SCHEMA_FAILED: 500,
  /** A schema change is recorded but not applied on every live replica within distributed_ddl_task_timeout; it keeps being applied. */
  SCHEMA_TIMEOUT: 504,
  /**
   * The table's definition changed between the moment this insert's rows were staged and its
   * LSN: its part would not fit the table. Nothing was stored; sending it again is safe.
   */
  SCHEMA_CHANGED: 503,
  /** mutations_sync=2: not every live replica finished the mutation in time; it stays in the log and runs on every replica. */
  MUTATION_TIMEOUT: 504,
  /** An INSERT sets in its own text a setting Chorus decides for staging (async_insert, insert_deduplicate, ...). */
  UNSUPPORTED_SETTING: 400,
  /** A setting with a value Chorus cannot take (insert_quorum=abc); nothing was done. */
  BAD_SETTING: 400,
  /** insert_quorum asks for more replicas than the shard has; nothing was stored. */
  TOO_FEW_REPLICAS: 400,
  /**
   * insert_quorum was not met within insert_quorum_timeout. The insert is stored and attached on
   * this replica and keeps replicating; a retry is deduplicated and waits for the quorum again.
   */
  QUORUM_TIMEOUT: 504,
  /** A read asked to wait for an LSN (X-Chorus-Wait-LSN) that this replica had not applied in time. */
  LSN_WAIT_TIMEOUT: 504,
  /** Backpressure: this replica runs as many inserts (in all, or into the table) as it is configured for; nothing stored. */
  TOO_MANY_INSERTS: 503,
  /** Backpressure: this replica is further behind in applying the log than backpressure.maxApplyLagSeconds; nothing stored. */
  REPLICA_LAGGING: 503,
  /** Backpressure: a partition of the table has more active parts than backpressure.maxActivePartsPerPartition; nothing stored. */
  TOO_MANY_PARTS: 503,
  INTERNAL: 500,
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class ChorusError extends Error {
  readonly code: ErrorCode;
  override readonly cause?: unknown;
  /** For a 503: how many seconds the client should wait before sending again (Retry-After); 1 when unset. */
  retryAfterSeconds?: number;

  constructor(code: ErrorCode, message: string, cause?: unknown) {
    super(message);
    this.name = 'ChorusError';
    this.code = code;
    this.cause = cause;
  }

  /** Prefixed so that the code is visible even where only the message travels (gRPC details, logs). */
  get qualifiedCode(): string {
    return `CHORUS_${this.code}`;
  }

  get httpStatus(): number {
    return ErrorCodes[this.code];
  }

  static from(err: unknown, fallback: ErrorCode = 'INTERNAL'): ChorusError {
    if (err instanceof ChorusError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new ChorusError(fallback, message, err);
  }
}
