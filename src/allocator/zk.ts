import { createHash } from 'node:crypto';
import zookeeper from 'node-zookeeper-client';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';

const { ACL, Exception, Id, Permission } = zookeeper;

export type ZkStat = zookeeper.Stat;

export type ZkOp = { op: 'setData'; path: string; data: Buffer; version: number } | { op: 'create'; path: string; data: Buffer };

export function isZkError(err: unknown, code: number): boolean {
  return err instanceof Exception && err.getCode() === code;
}

export const ZK_BAD_VERSION = Exception.BAD_VERSION;
export const ZK_NO_NODE = Exception.NO_NODE;
export const ZK_NODE_EXISTS = Exception.NODE_EXISTS;
export const ZK_NO_AUTH = Exception.NO_AUTH;

/**
 * The ACLs of Chorus's znodes under a digest identity `user:password`: only that identity may
 * change or delete them. Everyone may read (the allocator's state is LSN counters and block
 * hashes, nothing secret) and create beside them in a parent (other clusters and shards, with
 * their own identities, share `/chorus`); deleting a znode needs DELETE on its parent, which
 * only the identity has.
 */
export function digestAcls(auth: string): { znode: zookeeper.ACL[]; parent: zookeeper.ACL[] } {
  if (!auth) {
    const open = [new ACL(Permission.ALL, new Id('world', 'anyone'))];
    return { znode: open, parent: open };
  }
  const user = auth.slice(0, auth.indexOf(':'));
  const digest = new Id('digest', `${user}:${createHash('sha1').update(auth).digest('base64')}`);
  const anyone = new Id('world', 'anyone');
  return {
    znode: [new ACL(Permission.ALL, digest), new ACL(Permission.READ, anyone)],
    parent: [new ACL(Permission.ALL, digest), new ACL(Permission.READ | Permission.CREATE, anyone)],
  };
}

/** An ACL's permission bits: the library names the field `permission`, its typings `perms`. */
export function aclPermission(acl: zookeeper.ACL): number {
  return (acl as unknown as { permission: number }).permission;
}

function sameAcls(a: zookeeper.ACL[], b: zookeeper.ACL[]): boolean {
  const key = (acls: zookeeper.ACL[]) => acls.map((x) => `${x.id.scheme}:${x.id.id}:${aclPermission(x)}`).sort().join(',');
  return key(a) === key(b);
}

/**
 * A ZooKeeper session that renews itself when it expires, with promise-returning calls.
 * Every call is bounded by `timeoutMs`: a call that outlives it has an unknown outcome,
 * which callers must resolve by reading (see Allocator).
 */
export class ZkSession {
  private client: zookeeper.Client | null = null;
  private connected = false;
  private closed = true;
  private waiters: Array<() => void> = [];
  private lastUsedAt = 0;
  /** Since when this session has been open without a connection (0: connected, or closed). */
  private unreachableSince = 0;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly connect: string,
    private readonly opts: {
      sessionTimeoutMs: number;
      timeoutMs: number;
      /**
       * When set, the session is opened on first use and closed after this long unused
       * unless `keepOpen()` says otherwise: every open session pings ZooKeeper when idle,
       * so a shard should hold only the sessions it uses.
       */
      idleCloseMs?: number;
      keepOpen?: () => boolean;
      /** `user:password`: the session authenticates with it, and znodes it creates carry its ACL. */
      auth?: string;
    },
    private readonly log: Logger,
  ) {}

  get isConnected(): boolean {
    return this.connected;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** How long this open session has been trying to reach ZooKeeper (0 when connected or closed). */
  get unreachableForMs(): number {
    return this.closed || this.connected || this.unreachableSince === 0 ? 0 : Date.now() - this.unreachableSince;
  }

  start(): void {
    if (!this.closed) return;
    this.closed = false;
    this.open();
    if (this.opts.idleCloseMs !== undefined && !this.idleTimer) {
      const every = Math.max(100, Math.floor(this.opts.idleCloseMs / 4));
      this.idleTimer = setInterval(() => {
        if (!this.closed && Date.now() - this.lastUsedAt > this.opts.idleCloseMs! && !(this.opts.keepOpen?.() ?? false)) {
          this.log.debug('closing the idle ZooKeeper session');
          this.close();
        }
      }, every);
      this.idleTimer.unref();
    }
  }

  private open(): void {
    if (!this.connected && this.unreachableSince === 0) this.unreachableSince = Date.now();
    const client = zookeeper.createClient(this.connect, {
      sessionTimeout: this.opts.sessionTimeoutMs,
      spinDelay: 200,
      retries: 0,
    });
    this.client = client;
    // Sent with every (re)connection of this client by the library itself.
    if (this.opts.auth) client.addAuthInfo('digest', Buffer.from(this.opts.auth));
    client.on('connected', () => {
      this.connected = true;
      this.unreachableSince = 0;
      this.log.debug('zookeeper connected');
      for (const w of this.waiters.splice(0)) w();
    });
    client.on('disconnected', () => {
      this.connected = false;
      this.unreachableSince ||= Date.now();
      this.log.warn('zookeeper disconnected');
    });
    client.on('expired', () => {
      this.connected = false;
      this.unreachableSince ||= Date.now();
      this.log.warn('zookeeper session expired, opening a new one');
      client.close();
      if (!this.closed) this.open();
    });
    client.connect();
    this.watchHandshake(client);
  }

  /**
   * node-zookeeper-client bounds the TCP connect but not the handshake after it: a server that
   * accepts the connection and never answers the ConnectRequest leaves the client connecting
   * forever, with no "connected" and no "expired" (the suspected cause of a sidecar left without
   * a session after a ZooKeeper restart in a test; not seen since). A handshake that takes
   * longer than a connect may is cut here by destroying the socket, which the library treats as
   * any lost connection: it tries again.
   * Closing the client instead is not safe while it connects (its late reply is then parsed
   * as an ordinary reply and throws).
   */
  private watchHandshake(client: zookeeper.Client): void {
    const limitMs = Math.max(2000, Math.floor(this.opts.sessionTimeoutMs / 3));
    let socket: { connecting: boolean; destroyed: boolean; destroy(): void } | undefined;
    let since = 0;
    const timer = setInterval(() => {
      if (this.client !== client) return clearInterval(timer);
      const current = (client as unknown as { connectionManager?: { socket?: typeof socket } }).connectionManager?.socket;
      if (this.connected || !current || current.connecting || current.destroyed) {
        socket = undefined;
        return;
      }
      if (current !== socket) {
        socket = current;
        since = Date.now();
      } else if (Date.now() - since > limitMs) {
        this.log.warn({ waitedMs: Date.now() - since }, 'ZooKeeper accepted the connection but did not answer the handshake; connecting again');
        socket = undefined;
        current.destroy();
      }
    }, 500);
    timer.unref();
  }

  async waitConnected(timeoutMs = this.opts.timeoutMs): Promise<void> {
    this.lastUsedAt = Date.now();
    if (this.closed) this.start();
    if (this.connected) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        reject(new ChorusError('ALLOCATOR_UNAVAILABLE', `ZooKeeper ${this.connect} not reachable within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.push(done);
    });
  }

  private async call<T>(what: string, fn: (client: zookeeper.Client, cb: (err: unknown, value?: T) => void) => void): Promise<T> {
    await this.waitConnected();
    const client = this.client!;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new ChorusError('ALLOCATOR_UNAVAILABLE', `ZooKeeper ${what} timed out after ${this.opts.timeoutMs} ms`)),
        this.opts.timeoutMs,
      );
      fn(client, (err, value) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value as T);
      });
    });
  }

  getData(path: string): Promise<{ data: Buffer | undefined; stat: ZkStat }> {
    return this.call('getData', (c, cb) => c.getData(path, (err, data, stat) => cb(err, { data, stat })));
  }

  setData(path: string, data: Buffer, version: number): Promise<ZkStat> {
    return this.call('setData', (c, cb) => c.setData(path, data, version, (err, stat) => cb(err, stat)));
  }

  /**
   * Applies every operation or none (ZooKeeper's multi). Returns the stat of the first, which
   * must be a setData: a conflict there (BadVersion) is the error the caller sees.
   */
  multi(ops: ZkOp[]): Promise<ZkStat> {
    const { znode } = digestAcls(this.opts.auth ?? '');
    return this.call('multi', (c, cb) => {
      const tx = c.transaction();
      for (const op of ops) {
        if (op.op === 'setData') tx.setData(op.path, op.data, op.version);
        else tx.create(op.path, op.data, znode, zookeeper.CreateMode.PERSISTENT);
      }
      tx.commit((err, results) => cb(err, (results?.[0] as { stat?: ZkStat } | undefined)?.stat));
    });
  }

  /** Creates `path` and missing parents, with the session's parent ACL (see `protect`). */
  mkdirp(path: string): Promise<void> {
    const { parent } = digestAcls(this.opts.auth ?? '');
    return this.call('mkdirp', (c, cb) => c.mkdirp(path, parent, (err) => cb(err)));
  }

  getAcl(path: string): Promise<zookeeper.ACL[]> {
    return this.call('getACL', (c, cb) => c.getACL(path, (err, acls) => cb(err, acls)));
  }

  setAcl(path: string, acls: zookeeper.ACL[]): Promise<void> {
    return this.call('setACL', (c, cb) => c.setACL(path, acls, -1, (err) => cb(err)));
  }

  /**
   * Puts the session's digest ACL on `path` and on its parent (which guards its deletion),
   * where it is not already: a znode made before `zookeeper.auth` was set gets it here. A parent
   * another identity owns is left as it is, with a warning.
   */
  async protect(path: string): Promise<void> {
    if (!this.opts.auth) return;
    const acls = digestAcls(this.opts.auth);
    if (!sameAcls(await this.getAcl(path), acls.znode)) {
      await this.setAcl(path, acls.znode);
      this.log.info({ path }, 'digest ACL set on the znode');
    }
    const parent = path.slice(0, path.lastIndexOf('/'));
    if (!parent) return;
    if (!sameAcls(await this.getAcl(parent), acls.parent)) {
      try {
        await this.setAcl(parent, acls.parent);
        this.log.info({ path: parent }, 'digest ACL set on the parent znode');
      } catch (err) {
        if (!isZkError(err, ZK_NO_AUTH)) throw err;
        this.log.warn({ path: parent }, 'the parent znode belongs to another ZooKeeper identity: its ACL is left as it is');
      }
    }
  }

  getChildren(path: string): Promise<string[]> {
    return this.call('getChildren', (c, cb) => c.getChildren(path, (err, children) => cb(err, children)));
  }

  exists(path: string): Promise<boolean> {
    return this.call('exists', (c, cb) => c.exists(path, (err, stat) => cb(err, Boolean(stat))));
  }

  /** Counts `path` and every znode below it; a znode deleted while it is walked counts as gone. */
  async countZnodes(path: string): Promise<number> {
    let children: string[];
    try {
      children = await this.getChildren(path);
    } catch (err) {
      if (isZkError(err, ZK_NO_NODE)) return 0;
      throw err;
    }
    let count = 1;
    for (const child of children) count += await this.countZnodes(`${path === '/' ? '' : path}/${child}`);
    return count;
  }

  close(): void {
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = null;
    this.closed = true;
    this.connected = false;
    this.unreachableSince = 0;
    this.client?.close();
    this.client = null;
  }
}
