import * as grpc from '@grpc/grpc-js';
import type { FastifyInstance } from 'fastify';
import { Allocator } from '../allocator/allocator.js';
import { Leases } from '../allocator/lease.js';
import { windowEntries } from '../allocator/window.js';
import { GrantChecker } from '../insert/clients.js';
import { ZkSession } from '../allocator/zk.js';
import { registerAdmin, type AdminBackend, type AdminStatus, type EntryInfo } from '../api/admin.js';
import { registerOperationalRoutes, type Readiness } from '../api/http-routes.js';
import { ReflectionService } from '@grpc/reflection';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS } from '../gossip/proto.js';
import { CHORUS_VERSION } from '../core/version.js';
import type { CloneProgress } from '../replication/clone.js';
import { Attacher, dataPathBeside } from '../clickhouse/attach.js';
import { remoteStorageError, TableCatalog } from '../clickhouse/catalog.js';
import { ClickHouseHttp, quoteString } from '../clickhouse/http.js';
import { zookeeperRoot, type Config } from '../config/config.js';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';
import { Faults } from '../faults/faults.js';
import { Gossip } from '../gossip/gossip.js';
import { Peer } from '../gossip/peers.js';
import { Quorum, QUORUM_PEER_RETRY_MS, waitApplied, waitAppliedThrough } from '../replication/quorum.js';
import { Backpressure } from '../insert/backpressure.js';
import { InsertPipeline } from '../insert/pipeline.js';
import { createHttpServer } from '../insert/server.js';
import { StagingPool } from '../insert/staging.js';
import { LocalLog } from '../log/store.js';
import { partlessEntry } from '../log/entry.js';
import { Metrics } from '../metrics/metrics.js';
import { createInterserverServer, partForPush, pushedCopy } from '../parts/server.js';
import { PartStoreGc } from '../parts/gc.js';
import { assertSameFilesystem, PartStore } from '../parts/store.js';
import { Applier } from '../replication/applier.js';
import { Recovery } from '../replication/recovery.js';
import { Cloner, Snapshots } from '../replication/clone.js';
import { sleep } from '../core/async.js';
import { PeerTransport } from '../tls/transport.js';

export interface ListeningPorts {
  http: number;
  interserver: number;
  grpc: number;
}

/** One replica's sidecar: every box of DESIGN.md, wired together and started in order. */
/** With a lease held, start waits this many times zookeeper.leaseAfterMs for ZooKeeper before it starts on the lease. */
const START_ON_LEASE_AFTER = 10;

export class Sidecar implements AdminBackend {
  readonly metrics = new Metrics();
  readonly faults: Faults;
  readonly ch: ClickHouseHttp;
  readonly log: LocalLog;
  readonly store: PartStore;
  readonly zk: ZkSession;
  readonly allocator: Allocator;
  readonly leases: Leases;
  private stopping = false;
  readonly catalog: TableCatalog;
  readonly peers: Peer[];
  private readonly backpressure: Backpressure;
  readonly gossip: Gossip;
  readonly applier: Applier;
  readonly recovery: Recovery;
  readonly gc: PartStoreGc;
  readonly cloner: Cloner;
  /** Mutual TLS (or, with tls.insecure, plaintext) of the gRPC and interserver ports. */
  readonly transport: PeerTransport;
  private readonly snapshots: Snapshots;
  private readonly inFlightAllocations = new Set<string>();
  private readonly staging: StagingPool;
  private readonly http: FastifyInstance;
  private readonly interserver: FastifyInstance;
  private readonly grpcServer = new grpc.Server();
  private accepting = false;
  private readonly pipeline: InsertPipeline;
  private snapshotSweep: NodeJS.Timeout | null = null;

  constructor(
    readonly config: Config,
    private readonly logger: Logger,
  ) {
    this.faults = new Faults(config.testFaults);
    this.transport = PeerTransport.fromSettings(config.tls, logger.child({ component: 'tls' }));
    // Peers check a replica's certificate against its name in their peer list: a certificate
    // naming another replica would be refused by every peer, so it is refused here, at start.
    const certified = this.transport.watcher?.material.name;
    if (certified !== undefined && certified !== config.replica) {
      throw new ChorusError('CONFIG_INVALID', `tls.cert names ${JSON.stringify(certified)} (its CN), not this replica ${JSON.stringify(config.replica)}`);
    }
    this.ch = new ClickHouseHttp(config.clickhouse, (step) => this.metrics.clickhouseQueries.inc(step ?? { step: 'other', role: 'none' }));
    const dedupWindowMs = config.zookeeper.dedupWindowSeconds > 0 ? config.zookeeper.dedupWindowSeconds * 1000 : Number.MAX_SAFE_INTEGER;
    this.log = new LocalLog(config.dataDir, { dedupWindowMs });
    this.store = new PartStore(config.dataDir);
    this.zk = new ZkSession(
      config.zookeeper.connect,
      {
        sessionTimeoutMs: config.zookeeper.sessionTimeoutMs,
        timeoutMs: config.gossip.allocateTimeoutMs,
        idleCloseMs: config.zookeeper.idleCloseMs,
        auth: config.zookeeper.auth,
        keepOpen: () => this.gossip.allocatingMember() === config.replica,
      },
      logger.child({ component: 'zookeeper' }),
    );
    this.allocator = new Allocator(
      this.zk,
      {
        path: zookeeperRoot(config),
        window: { entries: config.zookeeper.dedupWindow, seconds: config.zookeeper.dedupWindowSeconds, chunkEntries: config.zookeeper.dedupChunkEntries },
        maxBatch: config.zookeeper.maxBatch,
        requestTimeoutMs: config.gossip.allocateTimeoutMs,
        maxQueued: config.zookeeper.maxQueuedAllocations,
        unknownOutcomeRetryMs: config.zookeeper.unknownOutcomeRetryMs,
        awayAfterMs: config.zookeeper.leaseSize > 0 ? config.zookeeper.leaseAfterMs : undefined,
      },
      logger.child({ component: 'allocator' }),
      {
        onBatch: (size, ms) => {
          this.metrics.allocatorBatch.observe(size);
          this.metrics.allocatorLatency.observe(ms / 1000);
        },
        onZkRequest: (kind, bytes) => {
          this.metrics.zkRequests.inc({ kind });
          if (bytes !== undefined) this.metrics.zkBytesWritten.inc(bytes);
        },
      },
    );
    this.catalog = new TableCatalog(this.ch, config.clickhouse.databases);
    this.staging = new StagingPool(this.ch, config.staging.poolSize, config.staging.idleDropMs);
    const attacher = new Attacher(this.ch, this.catalog, this.store, this.log, this.faults, this.metrics, this.logger.child({ component: 'attacher' }));
    this.peers = config.peers.filter((p) => p.name !== config.replica).map((p) => new Peer(p, this.transport));
    // Pushed parts held in memory at once, per peer on the origin and in all on a receiver.
    const pushedBytesBound = 16 * config.replication.pushPartBytes;
    this.applier = new Applier(
      {
        self: config.replica,
        fetchConcurrency: config.replication.fetchConcurrency,
        retryDelayMs: config.replication.retryDelayMs,
        fetchTimeoutMs: config.gossip.rpcTimeoutMs * 10,
        maxPushedBytesStoring: pushedBytesBound,
        clickhouseAnswers: () => this.ch.ping(),
      },
      this.log,
      this.store,
      attacher,
      this.peers,
      this.metrics,
      logger.child({ component: 'applier' }),
      this.faults,
    );
    this.gossip = new Gossip(
      {
        self: config.replica,
        intervalMs: config.gossip.intervalMs,
        rpcTimeoutMs: config.gossip.rpcTimeoutMs,
        allocateTimeoutMs: config.gossip.allocateTimeoutMs,
        maxEntriesPerMessage: 500,
        identify: this.transport.identify,
        maxMessageBytes: config.gossip.maxMessageBytes,
        lsnAllowance: config.gossip.lsnAllowance,
        isolated: () => this.faults.gossipIsolated,
        pushedParts:
          config.replication.pushPartBytes > 0
            ? {
                maxPartBytes: config.replication.pushPartBytes,
                maxQueuedBytes: pushedBytesBound,
                read: (entry) => partForPush(this.store, entry),
                send: (data) => pushedCopy(data, this.faults),
                store: (parts, from) => this.applier.storePushed(parts, from),
              }
            : undefined,
        swim: {
          probeIntervalMs: config.gossip.probeIntervalMs,
          probeTimeoutMs: config.gossip.probeTimeoutMs,
          suspicionTimeoutMs: config.gossip.suspicionTimeoutMs,
          indirectProbes: config.gossip.indirectProbes,
        },
      },
      this.peers,
      this.log,
      this.allocator,
      () => this.applier.notify(),
      this.metrics,
      logger.child({ component: 'gossip' }),
    );
    this.leases = new Leases(
      {
        self: config.replica,
        size: config.zookeeper.leaseSize,
        renewMs: config.zookeeper.leaseRenewMs,
        probeMs: config.zookeeper.leaseAfterMs,
        dedupWindowMs,
      },
      {
        log: this.log,
        allocate: (request) => this.gossip.allocate(request),
        takeLease: async (size, closes, used) => {
          const fields = { ...(size ? { leaseSize: size } : {}), ...(closes.length ? { closesLeases: closes } : {}), ...(used.length ? { usedLsns: used } : {}) };
          const entry = await this.pipeline.recordPartless(partlessEntry('lease', config.replica, fields), { what: 'this lease' });
          this.gossip.broadcast([entry]);
          return entry;
        },
        announce: (entries) => this.gossip.broadcast(entries),
        metrics: this.metrics,
        logger: logger.child({ component: 'lease' }),
      },
    );
    const pipeline = (this.pipeline = new InsertPipeline({
      self: config.replica,
      ch: this.ch,
      catalog: this.catalog,
      staging: this.staging,
      store: this.store,
      log: this.log,
      attacher,
      allocate: (request) => this.gossip.allocate(request),
      leases: this.leases,
      announce: (entries) => this.gossip.broadcast(entries),
      hold: (lsns) => this.applier.hold(lsns),
      notifyApplier: () => this.applier.notify(),
      voidLsns: async (lsns) => void (await this.recovery.voidLsns(lsns)),
      inFlight: this.inFlightAllocations,
      faults: this.faults,
      metrics: this.metrics,
      logger: logger.child({ component: 'insert' }),
      duplicateWaitMs: config.gossip.allocateTimeoutMs,
      databases: config.clickhouse.databases,
    }));
    this.recovery = new Recovery({
      self: config.replica,
      log: this.log,
      store: this.store,
      allocator: this.allocator,
      announce: (entries) => this.gossip.broadcast(entries),
      inFlight: this.inFlightAllocations,
      intentGraceMs: 2 * config.gossip.allocateTimeoutMs,
      logger: logger.child({ component: 'recovery' }),
    });
    this.gc = new PartStoreGc(this.store, this.log, () => this.appliedEverywhere(), config.partStore, logger.child({ component: 'gc' }));
    const members = this.gossip.swim.members;
    const quorum = new Quorum({
      local: { name: config.replica, waitApplied: (_from, lsns, timeoutMs, signal) => waitApplied(this.log, lsns, timeoutMs, signal) },
      peers: () => this.peers.filter((p) => members.get(p.name)?.state !== 'decommissioned'),
      liveMembers: () => members.list().filter((m) => m.state === 'alive').length,
      liveNames: () => members.list().filter((m) => m.state === 'alive').map((m) => m.name),
      retryMs: QUORUM_PEER_RETRY_MS,
      metrics: this.metrics,
      logger: logger.child({ component: 'quorum' }),
    });
    this.backpressure = new Backpressure(config.backpressure, {
      ch: this.ch,
      databases: config.clickhouse.databases,
      applyLagSeconds: () => this.log.applyLagSeconds(),
      metrics: this.metrics,
      logger: logger.child({ component: 'backpressure' }),
    });
    this.http = createHttpServer({
      config,
      backpressure: this.backpressure,
      pipeline,
      catalog: this.catalog,
      metrics: this.metrics,
      logger,
      acceptingInserts: () => this.accepting && !this.decommissioned,
      grants: new GrantChecker(this.ch, config.http.grantCacheMs),
      quorum,
      waitAppliedThrough: (lsn, timeoutMs, signal) => waitAppliedThrough(this.log, lsn, timeoutMs, signal),
    });
    registerOperationalRoutes(this.http, {
      metrics: this.metrics,
      readiness: () => this.readiness(),
      faults: this.faults,
      status: () => this.status(),
      beforeScrape: () => {
        this.metrics.partStoreBytes.set(this.gc.bytesHeld);
        this.metrics.lagSeconds.set(this.log.applyLagSeconds());
        this.metrics.memberStates.reset();
        for (const m of this.gossip.swim.members.list()) this.metrics.memberStates.inc({ state: m.state });
      },
    });
    this.snapshots = new Snapshots(config.dataDir, {
      self: config.replica,
      ch: this.ch,
      catalog: this.catalog,
      attacher,
      log: this.log,
      databases: config.clickhouse.databases,
      logger: logger.child({ component: 'snapshot' }),
    });
    // Every configured member, this replica included: who may be an entry's origin, and who may take parts.
    const shardMembers: ReadonlySet<string> = new Set([config.replica, ...config.peers.map((p) => p.name)]);
    this.cloner = new Cloner({
      ch: this.ch,
      catalog: this.catalog,
      attacher,
      log: this.log,
      store: this.store,
      logger: logger.child({ component: 'clone' }),
      timeoutMs: config.clickhouse.requestTimeoutMs,
      databases: config.clickhouse.databases,
      members: shardMembers,
    });
    this.interserver = createInterserverServer({ self: config.replica, log: this.log, store: this.store, faults: this.faults, logger, snapshots: this.snapshots, https: this.transport.httpsServerOptions(), members: shardMembers });
    this.transport.reloadServer(this.interserver.server);
    this.gossip.register(this.grpcServer);
    registerAdmin(this.grpcServer, this, config.admin.token);
    // grpcurl and other tools list and call the services without the proto files.
    new ReflectionService(protoLoader.loadSync(['chorus/v1/gossip.proto', 'chorus/v1/admin.proto'], LOADER_OPTIONS)).addToServer(this.grpcServer);
    for (const name of [...(JSON.parse(this.log.getMeta('decommissioned') ?? '[]') as string[]), ...this.log.decommissionedMembers()]) {
      this.gossip.swim.members.decommission(name);
    }
    this.log.onConflict = (c) => {
      this.metrics.logConflicts.inc();
      logger.error({ lsn: c.lsn, source: c.source, stored: c.stored, received: c.received }, `ALARM: two different entries for LSN ${c.lsn} (the other from ${c.source})`);
    };
  }

  /**
   * This replica was decommissioned (a log entry says so): it takes no inserts, since its peers
   * refuse what it would send them and an insert acknowledged here would live here only.
   */
  get decommissioned(): boolean {
    return this.gossip.swim.members.get(this.config.replica)?.state === 'decommissioned';
  }

  /** The lowest applied watermark among members that count (not decommissioned); 0 when one is unknown. */
  appliedEverywhere(): number {
    const progress = new Map(this.log.peerProgress().map((p) => [p.name, p.appliedWatermark]));
    let low = this.log.watermarks().applied;
    for (const m of this.gossip.swim.members.active()) {
      if (m.name !== this.config.replica) low = Math.min(low, progress.get(m.name) ?? 0);
    }
    return low;
  }

  async readiness(): Promise<Readiness> {
    const reasons: string[] = [];
    const lag = this.log.countUnapplied().entries;
    if (lag > this.config.health.maxReadyLagEntries) reasons.push(`${lag} entries wait to be applied here (more than health.maxReadyLagEntries = ${this.config.health.maxReadyLagEntries})`);
    if (this.cloner.progress.state === 'cloning') reasons.push('cloning from a peer');
    if (!(await this.ch.ping())) reasons.push(`ClickHouse at ${this.config.clickhouse.url} is not reachable`);
    const allocating = this.gossip.allocatingMember();
    // With a lease left, inserts go on while ZooKeeper is away: status and metrics tell it.
    if (allocating === this.config.replica && !this.allocator.usable && !(this.leases.enabled && this.leases.status().free > 0)) {
      reasons.push(`ZooKeeper at ${this.config.zookeeper.connect} is not connected`);
    }
    if (!this.accepting) reasons.push('not accepting inserts (starting or shutting down)');
    if (this.decommissioned) reasons.push('this replica was decommissioned: wipe it and start it under a new name to bring it back');
    return { ready: reasons.length === 0, reasons, backpressure: this.backpressure.conditions() };
  }

  /** The Admin service's GetStatus, also served as JSON at /_chorus/status. */
  async status(): Promise<AdminStatus> {
    const { applied } = this.log.watermarks();
    const readiness = await this.readiness();
    const duplicates = this.log.leaseDuplicates();
    const versionRows = await this.ch.rows<{ v: string }>('SELECT version() AS v').catch(() => []);
    const unapplied = this.log.countUnapplied();
    const progress = new Map(this.log.peerProgress().map((p) => [p.name, p]));
    const grpcOf = new Map(this.config.peers.map((p) => [p.name, p.grpc]));
    return {
      replica: this.config.replica,
      shard: this.config.shard,
      cluster: this.config.cluster,
      version: CHORUS_VERSION,
      clickhouseReachable: versionRows.length > 0,
      clickhouseVersion: versionRows[0]?.v ?? '',
      zookeeperSession: this.zk.isConnected ? 'connected' : this.zk.isOpen ? 'connecting' : 'closed (only the allocating member keeps one)',
      maxLsn: this.log.maxLsn(),
      appliedWatermark: applied,
      lag: { entries: unapplied.entries, bytes: unapplied.bytes, seconds: this.log.applyLagSeconds() },
      fetchesInFlight: this.applier.inFlightCount,
      partStoreBytes: this.gc.bytesHeld,
      members: this.gossip.swim.members.list().map((m) => {
        const self = m.name === this.config.replica;
        return {
          name: m.name,
          state: m.state,
          incarnation: m.incarnation,
          appliedWatermark: self ? applied : (progress.get(m.name)?.appliedWatermark ?? 0),
          maxLsn: self ? this.log.maxLsn() : (progress.get(m.name)?.maxLsn ?? 0),
          grpc: self ? `${this.config.grpc.host}:${this.config.grpc.port}` : (grpcOf.get(m.name) ?? ''),
        };
      }),
      ready: readiness.ready,
      notReadyReasons: readiness.reasons,
      paused: this.applier.paused,
      backpressure: readiness.backpressure ?? [],
      allocatingMember: this.gossip.allocatingMember(),
      clone: this.cloner.progress,
      alarms: this.log.conflicts().map(
        (c) => `LSN ${c.lsn}: ${c.source === 'local' ? 'this replica allocated it, but it' : `${c.source} sent an entry (${c.received.kind} from ${c.received.origin}) that differs from the one stored here, which`} holds ${c.stored.kind} from ${c.stored.origin} (${new Date(c.at).toISOString()})`,
      ),
      lease: this.leases.status(),
      leaseDuplicates: duplicates.map(({ at: _at, ...d }) => d),
      failing: this.log.failingEntries(),
    };
  }

  listEntries(q: { fromLsn: number; toLsn: number; table: string; state: string; limit: number }): EntryInfo[] {
    return this.log.listEntries(q);
  }

  getEntry(lsn: number): EntryInfo | undefined {
    return this.log.listEntries({ fromLsn: lsn, toLsn: lsn, table: '', state: '', limit: 1 })[0];
  }

  async resync(q: { fromLsn: number; toLsn: number; table: string }): Promise<number> {
    const todo = this.log
      .listEntries({ ...q, state: '', limit: 1_000_000 })
      .filter((e) => e.state === 'pending' || e.state === 'stored')
      .map((e) => e.entry);
    for (const e of todo) {
      // A copy that may be bad is fetched again; the origin's own copy is the only one it has.
      if (e.origin !== this.config.replica && e.kind === 'insert' && this.log.attachFloor(e.lsn) === null) {
        await this.store.remove(e.lsn);
        this.log.setState(e.lsn, 'pending');
      }
    }
    this.applier.retryNow(todo.map((e) => e.lsn));
    return todo.length;
  }

  async clone(from: string): Promise<CloneProgress> {
    const peer = this.peers.find((p) => p.name === from);
    if (!peer) throw new ChorusError('NOT_FOUND', `no peer named ${from}`);
    if (this.log.maxLsn() > 0 || this.log.getMeta('clone')) {
      throw new ChorusError('FAILED_PRECONDITION', 'this replica already has a log; a clone goes only into an empty replica (wipe it first)');
    }
    const wasPaused = this.applier.paused;
    this.applier.paused = true;
    try {
      return await this.cloner.clone(peer);
    } finally {
      this.applier.paused = wasPaused;
      this.applier.notify();
    }
  }

  /**
   * Removes a member for good. The decommission is a log entry, allocated like a table
   * operation: every replica that stores it, now or later, drops the member. Then everything
   * the other members hold is pulled here, and only LSNs of the member that no one holds are
   * voided; when a member does not answer, nothing is voided (what it holds is unknown) and the
   * call fails: run it again once that member is back, or decommission that one too.
   */
  async decommission(replica: string): Promise<number[]> {
    if (replica === this.config.replica) throw new ChorusError('FAILED_PRECONDITION', 'a replica cannot decommission itself: ask another member');
    const member = this.gossip.swim.members.get(replica);
    if (!member) throw new ChorusError('NOT_FOUND', `no member named ${replica}`);
    if (member.state !== 'decommissioned') {
      // A member that still answers may hold, and acknowledge, LSNs this decommission would void.
      const target = this.peers.find((p) => p.name === replica);
      const answers = target ? await target.ping(this.config.replica, [], this.config.gossip.rpcTimeoutMs).then(() => true, () => false) : false;
      if (answers) throw new ChorusError('FAILED_PRECONDITION', `${replica} is running and answers: stop it first (it could acknowledge inserts whose LSNs the decommission voids), then decommission it`);
      await this.recordDecommission(replica);
    }
    const unreachable: string[] = [];
    for (const peer of this.peers) {
      const state = this.gossip.swim.members.get(peer.name)?.state;
      if (peer.name === replica || state === 'decommissioned') continue;
      // Asked whatever its state here: a member seen suspect (or dead) may answer after all (this
      // replica was paused, say), and an answer is what the decommission needs, not a verdict.
      try {
        await this.gossip.pullAll(peer);
      } catch (err) {
        unreachable.push(`${peer.name}${state === 'alive' ? '' : ` (${state} here)`}: ${(err as Error).message}`);
      }
    }
    if (unreachable.length) {
      throw new ChorusError(
        'FAILED_PRECONDITION',
        `${replica} is decommissioned, but nothing it allocated was voided, since what these members hold is not known here: ${unreachable.join('; ')}. Run the decommission again once they answer (or decommission them too)`,
      );
    }
    const window = windowEntries(await this.allocator.read());
    const orphans = window.filter((e) => e.origin === replica && !this.log.get(e.lsn)).map((e) => e.lsn);
    // What its leases reserved and no one holds (no one else may use or void those).
    orphans.push(...this.log.leaseOrphans(replica));
    const voided = await this.recovery.voidLsns(orphans, replica);
    this.logger.warn({ replica, voided }, 'member decommissioned');
    return voided;
  }

  /** Allocates, records and announces the decommission entry, then applies it here. */
  private async recordDecommission(replica: string): Promise<void> {
    const entry = await this.pipeline.recordPartless(partlessEntry('decommission', this.config.replica, { member: replica }), { what: 'the decommission' });
    const names = new Set(JSON.parse(this.log.getMeta('decommissioned') ?? '[]') as string[]);
    names.add(replica);
    this.log.setMeta('decommissioned', JSON.stringify([...names]));
    // Announcing a decommission entry also applies it here (as for one recovery records).
    this.gossip.broadcast([entry]);
  }

  setPaused(paused: boolean): boolean {
    this.applier.paused = paused;
    this.applier.notify();
    this.logger.info({ paused }, paused ? 'applying paused' : 'applying resumed');
    return paused;
  }

  /** Starts in dependency order; returns the ports bound (useful when configured as 0). */
  async start(): Promise<ListeningPorts> {
    if (!this.transport.secure) this.logger.warn('tls.insecure is set: the gRPC and interserver ports are plaintext and peers are not authenticated; anyone who reaches them can forge gossip and read parts');
    this.transport.start();
    await this.store.init();
    await this.waitForClickHouse(this.config.startupWaitMs);
    const dialect = await this.ch.detect();
    this.logger.info({ clickhouse: dialect.version }, 'ClickHouse version detected');
    await this.staging.init();
    assertSameFilesystem(this.store.partsDir, await this.staging.probeDataPath());
    // Refused at start rather than at the first insert: a table on object storage, or with no
    // data directory on the part store's volume, cannot be replicated by hardlinks.
    for (const table of await this.catalog.replicated()) {
      if (table.remoteDisks.length > 0) throw remoteStorageError(table);
      await dataPathBeside(table, this.store.partsDir);
    }
    await this.initAllocator();
    const grpcPort = await new Promise<number>((resolve, reject) =>
      this.grpcServer.bindAsync(`${this.config.grpc.host}:${this.config.grpc.port}`, this.transport.grpcServerCredentials(), (err, port) =>
        err ? reject(err) : resolve(port),
      ),
    );
    await this.interserver.listen({ host: this.config.interserver.host, port: this.config.interserver.port });
    await this.http.listen({ host: this.config.http.host, port: this.config.http.port });
    await this.cloneIfNew();
    this.applier.start();
    this.gossip.start();
    this.backpressure.start();
    this.recovery.start(2000);
    this.leases.start();
    this.gc.start(this.config.partStore.gcIntervalMs);
    this.snapshotSweep = setInterval(() => this.snapshots.sweep(3600_000), 60_000);
    this.snapshotSweep.unref();
    this.accepting = true;
    const ports = {
      http: portOf(this.http),
      interserver: portOf(this.interserver),
      grpc: grpcPort,
    };
    this.logger.info({ ports }, 'chorus sidecar started');
    return ports;
  }

  /**
   * A replica with an empty log and no data, in a shard whose peers have a history (a new pod, a
   * lost volume), copies a consistent snapshot from a live peer before it applies anything.
   */
  /**
   * Waits for ZooKeeper at start, then reads the allocator and finishes what a crash left.
   * With a lease held, a replica that (re)starts during an outage waits START_ON_LEASE_AFTER times
   * zookeeper.leaseAfterMs at most: it takes inserts on its lease and serves reads, and the rest follows
   * in the background once ZooKeeper is back (intents of a crash wait for it, as they must).
   */
  private async initAllocator(): Promise<void> {
    const onLease = this.leases.enabled && this.leases.current() !== undefined;
    const ready = async () => {
      await this.recovery.recover();
      // Only the allocating member needs a session; the others open one if they ever must allocate.
      if (this.gossip.allocatingMember() !== this.config.replica) this.zk.close();
    };
    if (!onLease) {
      await this.allocator.init(this.config.startupWaitMs);
      return ready();
    }
    try {
      await this.allocator.init(Math.min(this.config.startupWaitMs, START_ON_LEASE_AFTER * this.config.zookeeper.leaseAfterMs));
    } catch (err) {
      const lease = this.leases.status();
      this.logger.warn({ err: (err as Error).message, lease: `${lease.first}-${lease.last}`, free: lease.free }, 'ZooKeeper is away: starting on the lease');
      void (async () => {
        while (!this.stopping) {
          try {
            await this.allocator.init(this.config.startupWaitMs);
            await ready();
            this.logger.info('ZooKeeper answered: the allocator is read and the recovery done');
            return;
          } catch (retryErr) {
            this.logger.debug({ err: (retryErr as Error).message }, 'ZooKeeper still away at start; trying again');
            await sleep(1000);
          }
        }
      })();
      return;
    }
    await ready();
  }

  private async cloneIfNew(): Promise<void> {
    const previous = this.log.getMeta('clone');
    if (previous?.startsWith('in-progress')) {
      throw new ChorusError(
        'CLONE_INTERRUPTED',
        `a clone (${previous}) was interrupted and left this replica half-copied: empty its ClickHouse data and Chorus state (chorus dev wipe, or new volumes) and start it again`,
      );
    }
    if (!this.config.replication.autoClone || this.log.maxLsn() > 0 || previous) return;
    const dbs = this.config.clickhouse.databases.map(quoteString).join(', ');
    const [{ n } = { n: 0 }] = await this.ch.rows<{ n: number }>(`SELECT count() AS n FROM system.parts WHERE active AND database IN (${dbs})`);
    if (Number(n) > 0) {
      this.logger.warn('the local log is empty but the tables hold data: not cloning; this replica applies the log from the start');
      return;
    }
    for (const peer of [...this.peers].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      try {
        const res = await peer.interserver.text('/v1/digest', { timeoutMs: this.config.gossip.rpcTimeoutMs });
        const digest = JSON.parse(res.body) as { maxLsn: number };
        if (digest.maxLsn > 0) {
          await this.cloner.clone(peer);
          return;
        }
      } catch (err) {
        if (this.cloner.progress.state === 'failed') throw err;
        this.logger.debug({ peer: peer.name, err: (err as Error).message }, 'peer not reachable while looking for a clone source');
      }
    }
  }

  private async waitForClickHouse(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await this.ch.ping())) {
      if (Date.now() > deadline) throw new ChorusError('CLICKHOUSE_UNAVAILABLE', `ClickHouse at ${this.config.clickhouse.url} did not answer within ${timeoutMs} ms`);
      await sleep(250);
    }
  }

  /**
   * SIGTERM: new inserts get 503 SHUTTING_DOWN at once, the ones in flight finish (up to
   * shutdownGraceMs), then everything closes: the local log is flushed, the ZooKeeper session
   * closed.
   */
  async stop(): Promise<void> {
    this.accepting = false;
    this.stopping = true;
    const deadline = Date.now() + this.config.shutdownGraceMs;
    while (this.pipeline.inFlight > 0 && Date.now() < deadline) await sleep(20);
    this.gossip.stop();
    this.backpressure.stop();
    this.recovery.stop();
    this.leases.stop();
    this.gc.stop();
    this.staging.stop();
    if (this.snapshotSweep) clearInterval(this.snapshotSweep);
    await this.http.close();
    await this.applier.stop();
    await this.interserver.close();
    await new Promise<void>((resolve) => this.grpcServer.tryShutdown(() => resolve()));
    this.allocator.stop();
    this.zk.close();
    for (const p of this.peers) p.close();
    this.transport.stop();
    this.ch.close();
    this.log.close();
  }
}

function portOf(app: FastifyInstance): number {
  const address = app.server.address();
  return typeof address === 'object' && address ? address.port : 0;
}
