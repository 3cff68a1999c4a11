/**
 * Where a chaos scenario runs. The workload, the nemesis and the checker talk only to this
 * interface, so the same scenarios drive the local backend (dev cluster processes in network
 * namespaces on this machine) and the kind backend (the kind overlay, through kubectl).
 */

/** Every fault the nemesis knows; `--faults` takes a comma-separated list of these names. */
export const FAULT_KINDS = [
  /** kill -9 one replica's sidecar; started again when the fault ends. */
  'kill-sidecar',
  /** kill -9 one replica's ClickHouse; started again when the fault ends. */
  'kill-clickhouse',
  /** ZooKeeper killed (-9), started again when the fault ends. */
  'restart-zookeeper',
  /** One replica cut from ZooKeeper longer than its session timeout, so the session expires. */
  'expire-zookeeper-session',
  /** One replica cut from its peers (both ways); ZooKeeper and clients still reach it. */
  'partition-replica',
  /** One replica cut from ZooKeeper only, for less than its session timeout. */
  'partition-zookeeper',
  /** Packets from one replica to another dropped, the other way delivered. */
  'partition-one-way',
  /** SIGSTOP one replica's sidecar (a long GC pause), SIGCONT when the fault ends. */
  'pause-sidecar',
  /** One replica's network slow (rate-limited, queued, lossy). */
  'slow-network',
  /** Bytes flipped in the parts one replica serves to its peers (the sidecar's test fault hook). */
  'corrupt-parts',
  /** One replica's data disk full. */
  'disk-full',
] as const;

export type FaultKind = (typeof FAULT_KINDS)[number];

export function isFaultKind(value: string): value is FaultKind {
  return (FAULT_KINDS as readonly string[]).includes(value);
}

/** One fault of a schedule: which, on whom, for how long. */
export interface Fault {
  kind: FaultKind;
  /** The replica it hits (the first of `targets`); for restart-zookeeper, the replica whose view is reported. */
  target: string;
  /** For partition-one-way: packets from `target` to `other` are dropped. */
  other?: string;
  durationMs: number;
}

/** What the backend did, for the timeline (e.g. "iptables DROP 10.231.7.3 -> 10.231.7.2"). */
export interface Injected {
  /** Undoes the fault; idempotent. */
  heal(): Promise<void>;
  detail: string;
}

/** One HTTP reply from a replica's Chorus port, or how the request failed before one came. */
export type HttpOutcome =
  | { kind: 'reply'; status: number; body: string; errorCode: string | null }
  /** `sent` false: the connection was refused or never opened, so nothing reached the server. */
  | { kind: 'no-reply'; sent: boolean; error: string };

export interface HttpRequest {
  replica: string;
  /** The SQL, sent as the `query` URL parameter. */
  query: string;
  body?: string;
  params?: Record<string, string>;
  timeoutMs: number;
}

export interface ChaosBackend {
  /** `local` or `kind`. */
  readonly name: string;
  readonly replicas: readonly string[];
  /** The fault kinds this backend can inject (the runner refuses a --faults list asking for others). */
  readonly supportedFaults: ReadonlySet<FaultKind>;
  /**
   * The sidecars' zookeeper.sessionTimeoutMs: the nemesis cuts longer than it to expire a
   * session and shorter to only disconnect one. 10 s (the dev cluster's) when not given.
   */
  readonly zookeeperSessionTimeoutMs?: number;
  /** POSTs to a replica's Chorus HTTP port (what a ClickHouse client pointed at Chorus does). */
  chorus(request: HttpRequest): Promise<HttpOutcome>;
  /** A query straight to a replica's ClickHouse; throws on failure. For set-up and for reading what is stored. */
  clickhouse(replica: string, sql: string): Promise<string>;
  /** Runs DDL on every replica's ClickHouse (DDL is not replicated by Chorus yet). */
  onEvery(sql: string): Promise<void>;
  inject(fault: Fault): Promise<Injected>;
  /**
   * Processes found dead that no fault killed (a crash), each started again when found: not an
   * invariant broken, but a finding the report shows.
   */
  readonly unexpectedExits?: readonly string[];
  /** Heals whatever is still injected and brings every process back; after it every replica answers. */
  healAll(): Promise<void>;
  /** True when every sidecar reports every member alive and no lag (its /readyz and status). */
  settled(): Promise<boolean>;
  /** The pairs of LSNs the sidecars report holding one block (lease duplicates), per table, as "lsn:duplicateOf". */
  reportedDuplicates(): Promise<Record<string, string[]>>;
  /** Stops everything the backend started and removes what it made (namespaces, rules, dirs). */
  close(): Promise<void>;
}

/** What the runner asks of a backend it starts (`LocalBackend.start(options)`, `KindBackend.start(options)`). */
export interface BackendStartOptions {
  /** Which ClickHouse the replicas run (the kind backend may support only `server`). */
  clickhouse: 'server' | 'chdb';
  replicas: number;
  /** Databases the sidecars replicate (their clickhouse.databases): the workload writes into `chaos`. */
  databases: readonly string[];
  /** Progress for the operator, one line at a time (the runner prints them on stderr). */
  log?: (line: string) => void;
  /** Leave the cluster's files (logs, data) in place when closed, and say where. */
  keep?: boolean;
  /** The sidecars' zookeeper.leaseSize: LSNs each keeps to take inserts on while ZooKeeper is away (0: off). */
  leaseSize?: number;
}
