import zookeeper from 'node-zookeeper-client';
import type { Logger } from '../core/logger.js';
import { ChorusError } from '../core/errors.js';

const { Exception } = zookeeper;

export type ZkStat = zookeeper.Stat;

export function isZkError(err: unknown, code: number): boolean {
  return err instanceof Exception && err.getCode() === code;
}

export const ZK_BAD_VERSION = Exception.BAD_VERSION;
export const ZK_NO_NODE = Exception.NO_NODE;
export const ZK_NODE_EXISTS = Exception.NODE_EXISTS;

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
    },
    private readonly log: Logger,
  ) {}

  get isConnected(): boolean {
    return this.connected;
  }

  get isOpen(): boolean {
    return !this.closed;
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
    const client = zookeeper.createClient(this.connect, {
      sessionTimeout: this.opts.sessionTimeoutMs,
      spinDelay: 200,
      retries: 0,
    });
    this.client = client;
    client.on('connected', () => {
      this.connected = true;
      this.log.debug('zookeeper connected');
      for (const w of this.waiters.splice(0)) w();
    });
    client.on('disconnected', () => {
      this.connected = false;
      this.log.warn('zookeeper disconnected');
    });
    client.on('expired', () => {
      this.connected = false;
      this.log.warn('zookeeper session expired, opening a new one');
      client.close();
      if (!this.closed) this.open();
    });
    client.connect();
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

  mkdirp(path: string): Promise<void> {
    return this.call('mkdirp', (c, cb) => c.mkdirp(path, (err) => cb(err)));
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
    this.client?.close();
    this.client = null;
  }
}
