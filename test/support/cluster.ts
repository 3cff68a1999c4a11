import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';

import { join } from 'node:path';
import { ZkSession } from '../../src/allocator/zk.js';
import { decodeHead } from '../../src/allocator/codec.js';
import { silentLogger } from '../../src/core/logger.js';
import { sleep } from '../../src/core/async.js';
import { devDown, devUp, scratchRoot, type ClusterInfo, type DevUpOptions, type ReplicaInfo } from '../../src/dev/cluster.js';
import { mntr } from '../../src/dev/zookeeper.js';
import { CLICKHOUSE_BACKENDS, isClickHouseBackend, type ClickHouseBackend } from '../../src/dev/clickhouse.js';
import type { TlsFiles } from '../../src/dev/certs.js';
import type { InterserverClient } from '../../src/tls/https.js';
import { PeerTransport } from '../../src/tls/transport.js';

/*
 * Talking to a dev cluster's gRPC and interserver ports from a test. Every dev cluster runs
 * mutual TLS there (unless started with `insecure: true`), with a throwaway CA under
 * <dir>/tls; a client must present a certificate the CA signed. These helpers present the
 * cluster's CLI certificate (CN chorus-cli):
 *   tlsFor(info)                   { ca, cert, key } buffers, for any TLS client
 *   grpcCredentials(info)          grpc-js credentials for `new SomeService(address, creds)`
 *   httpsAgent(info)               an https.Agent for `https.get(url, { agent })`
 *   interserverClient(info, name)  the client the sidecars themselves use for that replica (as member r1)
 *   cliTransportFor(info)          the CLI's transport, for `new AdminClient(address, token, transport)`
 *   cliEnv(info)                   env for the `chorus` CLI (CHORUS_DEV_DIR: it reads the rest)
 * On an insecure cluster they return plaintext equivalents (tlsFor: undefined).
 */
export function tlsFor(info: ClusterInfo, files: TlsFiles | undefined = info.tls.cli): { ca: Buffer; cert: Buffer; key: Buffer } | undefined {
  if (info.tls.insecure || !files) return undefined;
  return { ca: readFileSync(files.ca), cert: readFileSync(files.cert), key: readFileSync(files.key) };
}

export function grpcCredentials(info: ClusterInfo, files?: TlsFiles): grpc.ChannelCredentials {
  const tls = tlsFor(info, files ?? info.tls.cli);
  return tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, { checkServerIdentity: () => undefined }) : grpc.credentials.createInsecure();
}

export function httpsAgent(info: ClusterInfo, files?: TlsFiles): https.Agent {
  return new https.Agent({ ...tlsFor(info, files ?? info.tls.cli), servername: 'localhost', checkServerIdentity: () => undefined });
}

/** A transport presenting `files` (a certificate of the cluster's CA), plaintext on an insecure cluster. */
function transportWith(info: ClusterInfo, files: TlsFiles | undefined): PeerTransport {
  return PeerTransport.fromSettings(
    { ca: files?.ca ?? '', cert: files?.cert ?? '', key: files?.key ?? '', insecure: info.tls.insecure, reloadIntervalMs: 60_000 },
    silentLogger(),
  );
}

/** The transport the CLI would use with the cluster's CLI certificate (for AdminClient). */
export function cliTransportFor(info: ClusterInfo): PeerTransport {
  return transportWith(info, info.tls.cli);
}

/** A peer's client of `replica`'s interserver port, presenting member `as`'s certificate (parts go only to members). */
export function interserverClient(info: ClusterInfo, replica: string, as = info.replicas[0]!.name): InterserverClient {
  const r = info.replicas.find((x) => x.name === replica)!;
  return transportWith(info, info.replicas.find((x) => x.name === as)!.tls).interserverClient({ name: r.name, interserver: r.interserver });
}

export function cliEnv(info: ClusterInfo): Record<string, string> {
  return { CHORUS_DEV_DIR: info.dir };
}

/**
 * The ClickHouse the integration tests run against: CHORUS_TEST_CLICKHOUSE=server (Debian's
 * clickhouse-server, the default) or chdb (ClickHouse 26's engine). vitest.config.ts runs the
 * integration files once per backend.
 */
export function testBackend(): ClickHouseBackend {
  const value = process.env.CHORUS_TEST_CLICKHOUSE ?? 'server';
  if (!isClickHouseBackend(value)) throw new Error(`CHORUS_TEST_CLICKHOUSE must be one of ${CLICKHOUSE_BACKENDS.join(', ')}, not ${value}`);
  return value;
}

/**
 * A real dev cluster for one test file: the same devUp that `npm start` and `chorus dev up`
 * use, in a temp dir, stopped by pid and removed afterwards.
 */
export class TestCluster {
  private constructor(readonly info: ClusterInfo) {}

  static async start(opts: Omit<DevUpOptions, 'dir'> & { keep?: boolean }): Promise<TestCluster> {
    const dir = mkdtempSync(join(scratchRoot(), 'test-'));
    const info = await devUp({ clickhouse: testBackend(), ...opts, dir });
    return new TestCluster(info);
  }

  get replicas(): ReplicaInfo[] {
    return this.info.replicas;
  }

  replica(i: number): ReplicaInfo {
    return this.info.replicas[i]!;
  }

  async stop(): Promise<void> {
    await devDown(this.info.dir);
    if (!process.env.CHORUS_KEEP_TEST_DIRS) rmSync(this.info.dir, { recursive: true, force: true });
  }

  /** A query straight to a replica's ClickHouse (not through Chorus). */
  async clickhouse(i: number, sql: string): Promise<string> {
    const res = await fetch(`${this.replica(i).clickhouse}/?query=${encodeURIComponent(sql)}`, { method: 'POST' });
    const text = await res.text();
    if (!res.ok) throw new Error(`ClickHouse ${this.replica(i).name}: ${text}`);
    return text;
  }

  /** Runs the same statement on every replica's ClickHouse (DDL is not replicated). */
  async onEvery(sql: string): Promise<void> {
    for (let i = 0; i < this.replicas.length; i++) await this.clickhouse(i, sql);
  }

  /** POSTs to a replica's Chorus HTTP port. */
  async chorus(i: number, opts: { query?: string; body?: string; params?: Record<string, string> }): Promise<Response> {
    const url = new URL(this.replica(i).http + '/');
    if (opts.query !== undefined) url.searchParams.set('query', opts.query);
    for (const [k, v] of Object.entries(opts.params ?? {})) url.searchParams.set(k, v);
    return fetch(url, { method: 'POST', body: opts.body ?? '' });
  }

  /** count() and sum of a row hash of `table` on every replica. */
  async fingerprints(table: string, rowHash: string): Promise<Array<{ count: number; hash: string }>> {
    return Promise.all(
      this.replicas.map(async (_, i) => {
        const [count, hash] = (await this.clickhouse(i, `SELECT count(), sum(${rowHash}) FROM ${table}`)).trim().split('\t');
        return { count: Number(count), hash: hash! };
      }),
    );
  }

  /** Polls until every replica has `expected` rows of `table` with one and the same row-hash sum. */
  async waitConverged(table: string, rowHash: string, expected: number, timeoutMs: number): Promise<Array<{ count: number; hash: string }>> {
    const deadline = Date.now() + timeoutMs;
    let last: Array<{ count: number; hash: string }> = [];
    for (;;) {
      last = await this.fingerprints(table, rowHash);
      if (last.every((f) => f.count === expected && f.hash === last[0]!.hash)) return last;
      if (Date.now() > deadline) return last;
      await sleep(100);
    }
  }

  /**
   * A ZooKeeper session for one look, closed right after: an open session would ping while
   * idle and show up in the request counts the tests measure.
   */
  private async withZk<T>(fn: (zk: ZkSession) => Promise<T>): Promise<T> {
    const zk = new ZkSession(this.info.zookeeper, { sessionTimeoutMs: 10_000, timeoutMs: 10_000 }, silentLogger());
    zk.start();
    try {
      return await fn(zk);
    } finally {
      zk.close();
    }
  }

  znodes(path = '/chorus'): Promise<number> {
    return this.withZk((zk) => zk.countZnodes(path));
  }

  /** The allocator's next LSN, read from the shard's znode. */
  nextLsn(): Promise<number> {
    return this.withZk(async (zk) => decodeHead((await zk.getData(`/chorus/${this.info.cluster}/${this.info.shard}`)).data).next);
  }

  async zkPacketsReceived(): Promise<number> {
    return Number((await mntr(this.info.zookeeperPort)).zk_packets_received);
  }

  /** One metric's value summed over the given label filter, from a replica's /metrics. */
  async metric(i: number, name: string, labels: Record<string, string> = {}): Promise<number> {
    const text = await (await fetch(`${this.replica(i).http}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const m = /^([a-z_]+)(\{([^}]*)\})? ([0-9.eE+-]+)$/.exec(line);
      if (!m || m[1] !== name) continue;
      const present = Object.fromEntries((m[3] ?? '').split(',').filter(Boolean).map((kv) => {
        const [k, v] = kv.split('=');
        return [k!, v!.replace(/^"|"$/g, '')];
      }));
      if (Object.entries(labels).every(([k, v]) => present[k] === v)) sum += Number(m[4]);
    }
    return sum;
  }

  async armFaults(i: number, faults: Record<string, number | boolean>): Promise<void> {
    const res = await fetch(`${this.replica(i).http}/_chorus/faults`, { method: 'POST', body: JSON.stringify(faults) });
    if (!res.ok) throw new Error(`arming faults: ${await res.text()}`);
  }
}
