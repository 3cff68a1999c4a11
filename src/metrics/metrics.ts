import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Which side of an insert a step ran on: the replica that took it, or one applying it. */
export type StepRole = 'origin' | 'follower';

/** An insert step, for the step timings and for counting the ClickHouse queries each step sends. */
export interface StepLabel {
  step: string;
  role: StepRole;
}

/** Every Prometheus metric of one sidecar, on a registry of its own (never the global one). */
export class Metrics {
  readonly registry = new Registry();

  readonly inserts = new Counter({
    name: 'chorus_inserts_total',
    help: 'Insert requests by table and outcome (ok, deduplicated, error)',
    labelNames: ['table', 'outcome'],
    registers: [this.registry],
  });
  readonly quorumWaits = new Histogram({
    name: 'chorus_insert_quorum_wait_seconds',
    help: 'insert_quorum waits after the local attach, by outcome (met, timeout, aborted by the client)',
    labelNames: ['outcome'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });
  readonly backpressure = new Gauge({
    name: 'chorus_backpressure',
    help: 'What holds inserts back here now: lag (1 while this replica is further behind than backpressure.maxApplyLagSeconds), parts (tables over backpressure.maxActivePartsPerPartition)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly insertsRefused = new Counter({
    name: 'chorus_inserts_refused_total',
    help: 'Inserts refused with 503 by backpressure, by reason (concurrency, lag, parts)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly leaseLsns = new Gauge({
    name: 'chorus_lease_lsns',
    help: "This replica's lease (zookeeper.leaseSize): LSNs reserved for it to insert on while ZooKeeper is away, by state (free, used)",
    labelNames: ['state'],
    registers: [this.registry],
  });
  readonly leaseInserts = new Counter({
    name: 'chorus_lease_allocations_total',
    help: "Blocks allocated on this replica's lease while ZooKeeper was away",
    registers: [this.registry],
  });
  readonly zookeeperAway = new Gauge({
    name: 'chorus_zookeeper_away',
    help: '1 while ZooKeeper is away for this replica and its inserts go to its lease',
    registers: [this.registry],
  });
  readonly leaseDuplicates = new Gauge({
    name: 'chorus_lease_duplicates',
    help: 'Blocks stored twice because a retry reached another replica while ZooKeeper was away (pairs of LSNs known here; see chorus status)',
    registers: [this.registry],
  });
  readonly insertedRows = new Counter({
    name: 'chorus_inserted_rows_total',
    help: 'Rows written by inserts acknowledged here (deduplicated blocks excluded)',
    labelNames: ['table'],
    registers: [this.registry],
  });
  readonly dedupHits = new Counter({
    name: 'chorus_dedup_hits_total',
    help: 'Blocks found already in the dedup window',
    labelNames: ['table'],
    registers: [this.registry],
  });
  readonly allocatorBatch = new Histogram({
    name: 'chorus_allocator_batch_size',
    help: 'Allocation requests per ZooKeeper write (group commit)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [this.registry],
  });
  readonly allocatorLatency = new Histogram({
    name: 'chorus_allocator_zookeeper_seconds',
    help: 'Time from taking a batch to its ZooKeeper write being acknowledged',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly zkRequests = new Counter({
    name: 'chorus_zookeeper_requests_total',
    help: 'ZooKeeper requests made by the allocator',
    labelNames: ['kind'],
    registers: [this.registry],
  });
  readonly zkBytesWritten = new Counter({
    name: 'chorus_zookeeper_written_bytes_total',
    help: 'Bytes of znode data the allocator wrote (ZooKeeper logs each write and sends it to every follower)',
    registers: [this.registry],
  });
  readonly gossipRounds = new Counter({
    name: 'chorus_gossip_rounds_total',
    help: 'Gossip calls by kind and outcome',
    labelNames: ['kind', 'outcome'],
    registers: [this.registry],
  });
  readonly gossipRefusedEntries = new Counter({
    name: 'chorus_gossip_refused_entries_total',
    help: 'Log entries received from peers and refused (not stored), by reason (invalid, beyond_next_lsn, unverifiable)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly gossipRefusedMessages = new Counter({
    name: 'chorus_gossip_refused_messages_total',
    help: 'Gossip calls refused because their claimed sender is not the proven (or a configured) peer, by RPC',
    labelNames: ['rpc'],
    registers: [this.registry],
  });
  readonly logConflicts = new Counter({
    name: 'chorus_log_conflicts_total',
    help: 'Entries that differ from the entry stored for the same LSN (an alarm: see chorus status)',
    registers: [this.registry],
  });
  readonly fetchBytes = new Counter({
    name: 'chorus_fetch_bytes_total',
    help: 'Part bytes received from peers and verified, fetched or pushed with their entries',
    registers: [this.registry],
  });
  readonly fetchFailures = new Counter({
    name: 'chorus_fetch_failures_total',
    help: 'Part transfers from peers that failed (fetches, and parts pushed with their entries), by reason',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly pushedParts = new Counter({
    name: 'chorus_pushed_parts_total',
    help: 'Parts received inside a gossip push, by outcome: stored, refused (bytes not matching the manifest), failed (to write) or skipped (too many pushed bytes being written here); all but the first are fetched instead',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly applyLatency = new Histogram({
    name: 'chorus_apply_seconds',
    help: 'Time from LSN allocation to the part being attached on this replica',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly lagEntries = new Gauge({
    name: 'chorus_lag_entries',
    help: 'Known log entries not yet applied on this replica',
    registers: [this.registry],
  });

  readonly applyFailures = new Counter({
    name: 'chorus_apply_failures_total',
    help: 'Failed attempts to apply a log entry here, by entry kind (each is retried; chorus entries shows the last error)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  readonly mutations = new Gauge({
    name: 'chorus_mutations',
    help: 'Mutation entries submitted to ClickHouse here and not finished yet, by state (running; failing: ClickHouse reports a failure and retries it)',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });

  readonly lagSeconds = new Gauge({
    name: 'chorus_lag_seconds',
    help: 'Age of the oldest entry not yet applied on this replica (0 when caught up)',
    registers: [this.registry],
  });
  readonly partStoreBytes = new Gauge({
    name: 'chorus_part_store_bytes',
    help: 'Bytes of part copies held in the part store',
    registers: [this.registry],
  });
  readonly memberStates = new Gauge({
    name: 'chorus_members',
    help: 'Members of the shard by state, as this replica sees them',
    labelNames: ['state'],
    registers: [this.registry],
  });

  readonly insertSteps = new Histogram({
    name: 'chorus_insert_step_seconds',
    help: 'Wall time of each step of an insert: on the replica that took it (role=origin) and applying it on the others (role=follower)',
    labelNames: ['step', 'role'],
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [this.registry],
  });
  readonly clickhouseQueries = new Counter({
    name: 'chorus_clickhouse_queries_total',
    help: 'Queries sent to the local ClickHouse, by the insert step that sent them (step=other: outside the insert path)',
    labelNames: ['step', 'role'],
    registers: [this.registry],
  });

  /** Runs `fn` (sync or async) and observes its wall time, whether it succeeds or throws, as `step` of `role`. */
  timed<T>(role: StepRole, step: string, fn: () => T): T {
    const startedAt = performance.now();
    let result: T;
    try {
      result = fn();
    } catch (err) {
      this.observeStep(role, step, startedAt);
      throw err;
    }
    if (result instanceof Promise) return result.finally(() => this.observeStep(role, step, startedAt)) as T;
    this.observeStep(role, step, startedAt);
    return result;
  }

  /** Observes the time since `startedAt` (a `performance.now()`) as `step` of `role`. */
  observeStep(role: StepRole, step: string, startedAt: number): void {
    this.recordStep(role, step, performance.now() - startedAt);
  }

  /** Observes `ms` milliseconds as `step` of `role`. */
  recordStep(role: StepRole, step: string, ms: number): void {
    this.insertSteps.observe({ step, role }, ms / 1000);
  }

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }
}
