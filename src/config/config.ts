import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { MAX_LEASE_SIZE } from '../allocator/window.js';
import { z } from 'zod';
import { ChorusError } from '../core/errors.js';

const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$/, 'expected HOST:PORT');

const peerSchema = z
  .object({
    name: z.string().min(1),
    grpc: hostPort,
    interserver: z.string().url(),
  })
  .strict();

/** Every key with its default; the README's configuration table is written from this. */
export const configSchema = z
  .object({
    replica: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, _ . - only'),
    shard: z.string().min(1).default('shard1'),
    cluster: z.string().min(1).default('default'),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    dataDir: z.string().min(1),
    clickhouse: z
      .object({
        url: z.string().url().default('http://127.0.0.1:8123'),
        user: z.string().default('default'),
        password: z.string().default(''),
        databases: z.array(z.string().min(1)).min(1).default(['default']),
        requestTimeoutMs: z.number().int().positive().default(300_000),
      })
      .strict()
      .prefault({}),
    zookeeper: z
      .object({
        connect: z.string().min(1).default('127.0.0.1:2181'),
        root: z.string().default(''),
        sessionTimeoutMs: z.number().int().min(2000).default(30_000),
        /** Block IDs kept for deduplication, at least (ReplicatedMergeTree's `replicated_deduplication_window`). */
        dedupWindow: z.number().int().min(1).max(100_000).default(1000),
        /**
         * Block IDs older than this are forgotten (ReplicatedMergeTree's
         * `replicated_deduplication_window_seconds`, and its default: a week). 0: no age bound.
         */
        dedupWindowSeconds: z.number().int().min(0).default(604_800),
        /**
         * Block IDs per chunk znode of the window. One allocation rewrites at most one chunk's worth
         * (about 18 bytes a block ID); the window takes dedupWindow / dedupChunkEntries + 1 chunk znodes.
         */
        dedupChunkEntries: z.number().int().min(10).max(10_000).default(100),
        maxBatch: z.number().int().min(1).default(500),
        /**
         * LSNs each replica keeps in reserve (its lease), taken in the allocator's compare-and-set,
         * to go on taking inserts while ZooKeeper is away. 0 (the default) turns leases off:
         * inserts then fail while ZooKeeper is away, as ReplicatedMergeTree's do. See the README's
         * "Inserts while ZooKeeper is away" for what a lease costs.
         */
        leaseSize: z.number().int().min(0).max(MAX_LEASE_SIZE).default(0),
        /** How long a lease may lie below newer LSNs before its replica replaces it and voids what it did not use. */
        leaseRenewMs: z.number().int().min(100).default(30_000),
        /** How long ZooKeeper must have been unreachable before inserts go to the lease; also how often its return is probed then. */
        leaseAfterMs: z.number().int().min(100).default(1000),
        idleCloseMs: z.number().int().min(100).default(60_000),
        /**
         * `user:password` of a ZooKeeper digest identity: Chorus's znodes get an ACL that only it
         * may use, and the session authenticates with it. Empty leaves the znodes open to all.
         */
        auth: z
          .string()
          .regex(/^$|^[^:]+:.+$/, 'expected user:password')
          .default(''),
        /** Allocation requests that may wait for ZooKeeper at once; more are refused with ALLOCATOR_UNAVAILABLE. */
        maxQueuedAllocations: z.number().int().min(1).default(10_000),
        /**
         * How long a batch whose write to ZooKeeper has an unknown outcome is re-read and retried
         * before its inserts are answered ALLOCATOR_UNAVAILABLE (not acknowledged; their intents
         * stay for recovery, and a client's retry is deduplicated).
         */
        unknownOutcomeRetryMs: z.number().int().min(0).default(10_000),
      })
      .strict()
      .prefault({}),
    http: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8124),
        maxInsertBytes: z.number().int().positive().default(1024 ** 3),
        maxQueryBytes: z.number().int().positive().default(1024 * 1024),
        /** How long a client's positive grant answer (see GrantChecker) is reused; 0 asks ClickHouse every time. */
        grantCacheMs: z.number().int().min(0).default(2000),
        /**
         * Longest time a request may take to arrive whole (headers and body), on the insert path
         * and the proxy: a client that sends slowly cannot hold a staging table longer.
         */
        requestTimeoutMs: z.number().int().min(1000).default(300_000),
        /** A keep-alive connection with no request for this long is closed. */
        keepAliveTimeoutMs: z.number().int().min(0).default(10_000),
        /** How long a request with X-Chorus-Wait-LSN waits for this replica to apply that LSN, unless X-Chorus-Wait-Timeout-Ms says otherwise. */
        lsnWaitTimeoutMs: z.number().int().min(0).default(10_000),
      })
      .strict()
      .prefault({}),
    interserver: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(9010),
      })
      .strict()
      .prefault({}),
    grpc: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(9100),
      })
      .strict()
      .prefault({}),
    /**
     * Mutual TLS on the gRPC and interserver ports: PEM files of the CA, this replica's
     * certificate (CN and a DNS SAN = the replica name) and its key, reloaded when they change.
     */
    tls: z
      .object({
        ca: z.string().default(''),
        cert: z.string().default(''),
        key: z.string().default(''),
        /** Plaintext and unauthenticated peers; a warning is logged at start. */
        insecure: z.boolean().default(false),
        reloadIntervalMs: z.number().int().min(50).default(5000),
      })
      .strict()
      .prefault({}),
    peers: z.array(peerSchema).default([]),
    gossip: z
      .object({
        intervalMs: z.number().int().min(10).default(300),
        rpcTimeoutMs: z.number().int().min(10).default(3000),
        allocateTimeoutMs: z.number().int().min(10).default(5000),
        probeIntervalMs: z.number().int().min(10).default(500),
        probeTimeoutMs: z.number().int().min(10).default(300),
        suspicionTimeoutMs: z.number().int().min(10).default(3000),
        indirectProbes: z.number().int().min(0).default(2),
        // Bytes of entries in one push or exchange reply (gRPC refuses messages above 4 MiB).
        maxMessageBytes: z.number().int().min(64 * 1024).max(3 * 1024 * 1024).default(1024 * 1024),
        // Received LSNs this far beyond the allocator's last seen next LSN are checked against
        // ZooKeeper (one read); nearer ones are taken without a request.
        lsnAllowance: z.number().int().min(0).default(10_000),
      })
      .strict()
      .prefault({}),
    replication: z
      .object({
        fetchConcurrency: z.number().int().min(1).default(16),
        // Parts up to this size (all files) travel inside the gossip push with their entry, so
        // followers need not fetch them; 0 sends every part by fetch.
        pushPartBytes: z.number().int().min(0).max(1024 * 1024).default(256 * 1024),
        retryDelayMs: z.number().int().min(1).default(500),
        autoClone: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    partStore: z
      .object({
        minRetentionMs: z.number().int().min(0).default(60_000),
        maxRetentionMs: z.number().int().min(0).default(24 * 3600 * 1000),
        gcIntervalMs: z.number().int().min(10).default(5000),
      })
      .strict()
      .prefault({}),
    staging: z
      .object({
        poolSize: z.number().int().min(1).max(64).default(8),
        /** A table's staging tables unused this long are dropped (and re-created on its next insert). */
        idleDropMs: z.number().int().min(1000).default(10 * 60_000),
      })
      .strict()
      .prefault({}),
    admin: z
      .object({
        /** Bearer token every admin call must carry; empty leaves the admin API open. */
        token: z.string().default(''),
      })
      .strict()
      .prefault({}),
    backpressure: z
      .object({
        /** Inserts this replica runs at once; more get 503 TOO_MANY_INSERTS. 0: no bound. */
        maxConcurrentInserts: z.number().int().min(0).default(64),
        /** The same, per table. 0: no bound. */
        maxConcurrentInsertsPerTable: z.number().int().min(0).default(32),
        /** Inserts get 503 REPLICA_LAGGING while the oldest entry waiting to be applied here is older than this. 0: off. */
        maxApplyLagSeconds: z.number().min(0).default(30),
        /**
         * Inserts into a table get 503 TOO_MANY_PARTS while one of its partitions has more active
         * parts than this. Unset: ClickHouse's own parts_to_throw_insert (300 on 18.16, 3000 on
         * 23+), which its ATTACH PART does not enforce. 0: off.
         */
        maxActivePartsPerPartition: z.number().int().min(0).optional(),
        /** How often the lag and the parts are looked at. */
        checkIntervalMs: z.number().int().min(50).default(1000),
      })
      .strict()
      .prefault({}),
    health: z
      .object({
        /** /readyz answers not ready while more entries than this wait to be applied here. */
        maxReadyLagEntries: z.number().int().min(0).default(1000),
      })
      .strict()
      .prefault({}),
    shutdownGraceMs: z.number().int().min(0).default(15_000),
    /**
     * How long start waits for ClickHouse and for ZooKeeper to answer before it gives up (and the
     * process exits for its supervisor to restart it): pods of a StatefulSet start together, and
     * ZooKeeper takes a while to form a quorum.
     */
    startupWaitMs: z.number().int().min(0).default(300_000),
    testFaults: z.boolean().default(false),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type PeerConfig = z.infer<typeof peerSchema>;

export function zookeeperRoot(config: Config): string {
  return config.zookeeper.root || `/chorus/${config.cluster}/${config.shard}`;
}

/** `zookeeper.sessionTimeoutMs` -> `CHORUS_ZOOKEEPER_SESSION_TIMEOUT_MS`. */
export function envVarFor(path: string[]): string {
  return 'CHORUS_' + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

type Shape = Record<string, z.ZodTypeAny>;

function unwrap(schema: z.ZodTypeAny): z.ZodTypeAny {
  let s: z.ZodTypeAny = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional) s = s.unwrap() as z.ZodTypeAny;
  return s;
}

/** Every leaf key of the schema, as a path. */
export function configKeys(shape: Shape = configSchema.shape, prefix: string[] = []): string[][] {
  const keys: string[][] = [];
  for (const [key, child] of Object.entries(shape)) {
    const inner = unwrap(child);
    if (inner instanceof z.ZodObject) keys.push(...configKeys(inner.shape as Shape, [...prefix, key]));
    else keys.push([...prefix, key]);
  }
  return keys;
}

function leafSchema(path: string[]): z.ZodTypeAny {
  let s: z.ZodTypeAny = configSchema;
  for (const key of path) s = (unwrap(s) as z.ZodObject<Shape>).shape[key]!;
  return unwrap(s);
}

function parseEnvValue(path: string[], raw: string): unknown {
  const schema = leafSchema(path);
  if (schema instanceof z.ZodNumber) {
    const n = Number(raw);
    return Number.isFinite(n) && raw.trim() !== '' ? n : raw;
  }
  if (schema instanceof z.ZodBoolean) {
    if (/^(1|true|yes)$/i.test(raw)) return true;
    if (/^(0|false|no)$/i.test(raw)) return false;
    return raw;
  }
  if (schema instanceof z.ZodArray) {
    const trimmed = raw.trim();
    if (trimmed.startsWith('[')) {
      try {
        return JSON.parse(trimmed);
      } catch {
        return raw;
      }
    }
    return trimmed === '' ? [] : trimmed.split(',').map((s) => s.trim());
  }
  return raw;
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown) {
  let node = target;
  for (const key of path.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

/**
 * Config comes from a YAML file (optional) and CHORUS_* environment variables; the
 * environment wins. Unknown keys and wrong types fail here, naming the key.
 */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Record<string, unknown> } = {}): Config {
  let raw: Record<string, unknown> = {};
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ChorusError('CONFIG_INVALID', `cannot read config file ${opts.file}: ${(err as Error).message}`);
    }
    const parsed = parseYaml(text) as unknown;
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new ChorusError('CONFIG_INVALID', `config file ${opts.file}: expected a mapping at the top level`);
      }
      raw = parsed as Record<string, unknown>;
    }
  }
  const env = opts.env ?? process.env;
  const known = new Set<string>();
  for (const path of configKeys()) {
    const name = envVarFor(path);
    known.add(name);
    const value = env[name];
    // A Service named chorus-http, say, makes CHORUS_HTTP_PORT=tcp://IP:PORT in its pods.
    if (value !== undefined && !(isServiceLink(name, env) && /^(tcp|udp|sctp):\/\//.test(value))) setPath(raw, path, parseEnvValue(path, value));
  }
  for (const name of Object.keys(env)) {
    if (name.startsWith('CHORUS_') && !known.has(name) && !IGNORED_ENV.has(name) && !isServiceLink(name, env)) {
      throw new ChorusError('CONFIG_INVALID', `unknown environment variable ${name}`);
    }
  }
  for (const [key, value] of Object.entries(opts.overrides ?? {})) setPath(raw, key.split('.'), value);
  return validateConfig(raw);
}

/** Variables that are not config keys but are read by other parts (the CLI, the dev harness, the tests). */
const IGNORED_ENV = new Set([
  'CHORUS_CONFIG',
  'CHORUS_GRPC',
  'CHORUS_DEV_DIR',
  'CHORUS_DEV_CLICKHOUSE_SERVER',
  'CHORUS_TEST_CLICKHOUSE',
  'CHORUS_KEEP_TEST_DIRS',
  'CHORUS_SCRATCH_DIR',
]);

/**
 * Kubernetes gives every pod, unless its spec sets enableServiceLinks: false, variables for each
 * Service of its namespace: <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<port name>], <NAME>_PORT
 * and <NAME>_PORT_<n>_<proto>[_PROTO|_PORT|_ADDR]. A Service named chorus or chorus-* makes
 * CHORUS_* ones, which are not config keys. One is recognised by its family's _SERVICE_HOST
 * being set too, so that a misspelt key (CHORUS_HTPP_PORT) is still refused.
 */
function isServiceLink(name: string, env: NodeJS.ProcessEnv): boolean {
  for (let i = name.indexOf('_'); i > 0; i = name.indexOf('_', i + 1)) {
    const service = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (env[`${service}_SERVICE_HOST`] !== undefined && /^(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$/.test(rest)) return true;
  }
  return false;
}

export function validateConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const key = issue.path.join('.') || '(top level)';
      if (issue.code === 'unrecognized_keys') {
        const prefix = issue.path.length ? issue.path.join('.') + '.' : '';
        return `unknown key ${issue.keys.map((k) => prefix + k).join(', ')}`;
      }
      return `${key}: ${issue.message}`;
    });
    throw new ChorusError('CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`);
  }
  return result.data;
}
