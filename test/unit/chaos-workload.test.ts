import { describe, expect, it } from 'vitest';
import { FAULT_KINDS, type ChaosBackend, type Fault, type HttpOutcome, type HttpRequest } from '../chaos/backend.js';
import { classify } from '../chaos/outcome.js';
import { seededRandom } from '../chaos/random.js';
import { renderJson, renderText } from '../chaos/report.js';
import { InterruptedError, parseCli, runChaos, UsageError, type ChaosOptions } from '../chaos/run.js';
import { DROPPED_TABLE, INSERTS_TABLE, runWorkload } from '../chaos/workload.js';

/**
 * An in-memory stand-in for a cluster, correct unless told otherwise: every replica applies
 * every statement at once and in the same order, and an insert seen before (same token, or same
 * body without one) is stored once. Its answers are often lost or errors, as under faults.
 */
interface FakeFlaws {
  /** Drops an acknowledged insert's rows from the last replica. */
  loseAcknowledged?: boolean;
  /** Stores a retried insert again. */
  ignoreDedup?: boolean;
  /** Stores every insert that carries a token, and answers each try of it as if the connection had been refused. */
  storeWhenRefused?: boolean;
}

class FakeCluster implements ChaosBackend {
  readonly name = 'fake';
  readonly replicas = ['r1', 'r2', 'r3'];
  readonly supportedFaults = new Set(FAULT_KINDS.filter((k) => k !== 'disk-full'));
  readonly zookeeperSessionTimeoutMs = 10_000;
  readonly injected: Fault[] = [];
  healed = 0;
  closed = false;
  private readonly random = seededRandom(11);
  /** Per replica, per table: rows with their partition. */
  private readonly stored = new Map(this.replicas.map((r) => [r, new Map<string, Array<{ row: number; partition: string }>>()]));
  private readonly seen = new Set<string>();
  private acknowledged = 0;

  constructor(private readonly flaws: FakeFlaws = {}) {}

  async chorus(request: HttpRequest): Promise<HttpOutcome> {
    await new Promise((resolve) => setImmediate(resolve));
    const dice = this.random.next();
    const refused = { kind: 'no-reply', sent: false, error: 'connect ECONNREFUSED' } as const;
    if (this.flaws.storeWhenRefused && request.params?.insert_deduplication_token !== undefined) {
      this.apply(request);
      return refused;
    }
    if (dice < 0.1) return refused;
    if (dice < 0.15) return { kind: 'reply', status: 503, body: 'CHORUS_ALLOCATOR_UNAVAILABLE: ...', errorCode: 'CHORUS_ALLOCATOR_UNAVAILABLE' };
    const fresh = this.apply(request);
    if (dice < 0.25) return { kind: 'no-reply', sent: true, error: 'timeout after 10000 ms' };
    if (dice < 0.3) return { kind: 'reply', status: 500, body: 'CHORUS_ATTACH_FAILED: ...', errorCode: 'CHORUS_ATTACH_FAILED' };
    if (this.flaws.loseAcknowledged && fresh && ++this.acknowledged % 5 === 0) {
      const [table, rows] = fresh;
      const last = this.stored.get(this.replicas.at(-1)!)!;
      last.set(table, last.get(table)!.filter((r) => !rows.includes(r.row)));
    }
    return { kind: 'reply', status: 200, body: '', errorCode: null };
  }

  private rowsOf(replica: string, table: string) {
    const tables = this.stored.get(replica)!;
    if (!tables.has(table)) tables.set(table, []);
    return tables.get(table)!;
  }

  /** Applies a statement on every replica; returns the rows an insert added. */
  private apply(request: HttpRequest): [string, number[]] | null {
    const insert = /^INSERT INTO (\S+) FORMAT TabSeparated$/.exec(request.query);
    if (insert) {
      const table = insert[1]!;
      const key = `${table}\n${request.params?.insert_deduplication_token ?? request.body}`;
      if (this.seen.has(key) && !this.flaws.ignoreDedup) return null;
      this.seen.add(key);
      const lines = request.body!.split('\n').filter((l) => l !== '');
      // The probe table has one column; the workload's tables have (insert_id, row_id, day, payload).
      const rows = lines.map((l) => l.split('\t')).map((cells) => ({ row: Number(cells[1] ?? 0), partition: (cells[2] ?? '').slice(0, 7).replace('-', '') }));
      for (const r of this.replicas) this.rowsOf(r, table).push(...rows);
      return [table, rows.map((r) => r.row)];
    }
    const drop = /^ALTER TABLE (\S+) DROP PARTITION (\d+)$/.exec(request.query);
    const truncate = /^TRUNCATE TABLE (\S+)$/.exec(request.query);
    for (const r of this.replicas) {
      if (drop) this.stored.get(r)!.set(drop[1]!, this.rowsOf(r, drop[1]!).filter((x) => x.partition !== drop[2]));
      else if (truncate) this.stored.get(r)!.set(truncate[1]!, []);
      else throw new Error(`the fake does not know ${request.query}`);
    }
    return null;
  }

  async clickhouse(replica: string, sql: string): Promise<string> {
    const select = /^SELECT row_id FROM (\S+) FORMAT TabSeparated$/.exec(sql);
    if (select) return this.rowsOf(replica, select[1]!).map((r) => `${r.row}\n`).join('');
    const count = /^SELECT count\(\) FROM (\S+)/.exec(sql);
    if (count) return `${this.rowsOf(replica, count[1]!).length}\n`;
    throw new Error(`the fake does not know ${sql}`);
  }

  async onEvery(): Promise<void> {}

  async inject(fault: Fault) {
    this.injected.push(fault);
    return { detail: `fake ${fault.kind}`, heal: async () => void this.healed++ };
  }

  async healAll(): Promise<void> {}

  async reportedDuplicates(): Promise<Record<string, string[]>> {
    return {};
  }

  async settled(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

const FAST_FAULTS = Object.fromEntries(FAULT_KINDS.map((k) => [k, { minMs: 30, maxMs: 80 }]));

const run = (cluster: FakeCluster, overrides: Partial<ChaosOptions> = {}) =>
  runChaos({
    durationMs: 1_500,
    faults: ['kill-sidecar', 'partition-one-way', 'restart-zookeeper'],
    seed: 1234,
    backend: 'local',
    clickhouse: 'server',
    clients: 4,
    convergenceTimeoutMs: 2_000,
    startBackend: async () => cluster,
    nemesis: { startDelayMs: 50, gapMs: { minMs: 20, maxMs: 50 }, durations: FAST_FAULTS },
    // Plenty of drops and tokens, so that a short run has them.
    workload: { dropShare: 0.2, tokenShare: 0.5 },
    ...overrides,
  });

describe('chaos outcome classification', () => {
  const reply = (status: number, errorCode: string | null): HttpOutcome => ({ kind: 'reply', status, body: '', errorCode });

  it.each([
    ['acknowledged', reply(200, null), 'ok'],
    ['connection refused: never reached the server', { kind: 'no-reply', sent: false, error: 'ECONNREFUSED' } as HttpOutcome, 'failed'],
    ['no answer after sending', { kind: 'no-reply', sent: true, error: 'timeout' } as HttpOutcome, 'unknown'],
    ['refused while parsing', reply(400, 'CHORUS_BAD_QUERY'), 'failed'],
    ['refused while parsing, code without prefix', reply(400, 'BAD_QUERY'), 'failed'],
    ['refused by ClickHouse grants', reply(403, 'CHORUS_CLICKHOUSE_REFUSED'), 'failed'],
    ['body cut short', reply(400, 'CHORUS_TRUNCATED_BODY'), 'failed'],
    ['shutting down: the allocator raises it mid-allocation too', reply(503, 'CHORUS_SHUTTING_DOWN'), 'unknown'],
    ['allocator: maybe landed', reply(503, 'CHORUS_ALLOCATOR_UNAVAILABLE'), 'unknown'],
    ['recorded, attach pending', reply(500, 'CHORUS_ATTACH_FAILED'), 'unknown'],
    ['request timeout', reply(408, 'CHORUS_REQUEST_TIMEOUT'), 'unknown'],
    ['an error without a Chorus code', reply(502, null), 'unknown'],
  ])('%s -> %s', (_what, result, outcome) => {
    expect(classify(result).outcome).toBe(outcome);
  });
});

describe('chaos runner on an in-memory cluster', () => {
  it('passes a correct cluster whose answers are often lost, with inserts, drops, retries and faults', async () => {
    const cluster = new FakeCluster();
    const result = await run(cluster);
    expect(result.check.violations).toEqual({ lost: 0, unexpected: 0, duplicated: 0, divergent: 0, survivedDrop: 0 });
    expect(result.ok).toBe(true);
    expect(cluster.closed).toBe(true);
    const { counters } = result.workload;
    expect(counters.inserts.ok).toBeGreaterThan(20);
    expect(counters.drops.ok).toBeGreaterThan(0);
    expect(counters.attempts.failed).toBeGreaterThan(0);
    expect(counters.attempts.unknown).toBeGreaterThan(0);
    expect(result.check.tables.map((t) => t.table)).toEqual([DROPPED_TABLE, INSERTS_TABLE]);
    expect(new Set(cluster.injected.map((f) => f.kind))).toEqual(new Set(['kill-sidecar', 'partition-one-way', 'restart-zookeeper']));
    expect(result.timeline.every((f) => f.healedAt !== null && f.error === undefined)).toBe(true);
    expect(result.faultsInjected['kill-sidecar']!.injected).toBeGreaterThan(0);
    expect(result.convergence.afterMs).not.toBeNull();
    expect(result.workload.perSecond.reduce((n, s) => n + s.ok + s.failed + s.unknown, 0)).toBe(
      counters.attempts.ok + counters.attempts.failed + counters.attempts.unknown,
    );

    const text = renderText(result);
    expect(text).toContain('seed 1234');
    expect(text).toContain('PASS');
    expect(text).toMatch(/timeline/);
    expect(JSON.parse(renderJson(result)).check.ok).toBe(true);
  });

  it('makes the same choices for the same seed', async () => {
    // One client, so the order of operations is the seed's alone (timing only decides how many).
    const operations = async () => {
      const { history } = await runWorkload({ backend: new FakeCluster(), seed: 99, runId: 'same', durationMs: 300, clients: 1, dropShare: 0.3 });
      return history.inserts.map((i) => `${i.table} ${i.partition} ${i.rows.length} ${i.attempts.map((a) => a.replica).join(',')}`);
    };
    const [a, b] = [await operations(), await operations()];
    const common = Math.min(a.length, b.length);
    expect(common).toBeGreaterThan(10);
    expect(a.slice(0, common)).toEqual(b.slice(0, common));
  });

  it('fails a cluster that loses acknowledged rows on one replica', async () => {
    const result = await run(new FakeCluster({ loseAcknowledged: true }), { faults: [] });
    expect(result.ok).toBe(false);
    expect(result.check.violations.lost + result.check.violations.survivedDrop).toBeGreaterThan(0);
    expect(result.check.violations.divergent).toBeGreaterThan(0);
    expect(renderText(result)).toMatch(/FAIL[\s\S]*violations:[\s\S]*divergent/);
  });

  it('fails a cluster that stores a retried insert twice', async () => {
    const result = await run(new FakeCluster({ ignoreDedup: true }), { faults: [] });
    expect(result.ok).toBe(false);
    expect(result.check.violations.duplicated).toBeGreaterThan(0);
  });

  it('fails a cluster that stores what it said it never received', async () => {
    const result = await run(new FakeCluster({ storeWhenRefused: true }), { faults: [] });
    expect(result.check.violations.unexpected).toBeGreaterThan(0);
  });

  it('stops on its signal (Ctrl-C) within a moment, heals the fault in effect and closes the backend', async () => {
    const cluster = new FakeCluster();
    const interrupt = new AbortController();
    setTimeout(() => interrupt.abort(), 500);
    const started = Date.now();
    await expect(run(cluster, { durationMs: 60_000, signal: interrupt.signal, nemesis: { startDelayMs: 0, durations: Object.fromEntries(FAULT_KINDS.map((k) => [k, { minMs: 30_000, maxMs: 30_000 }])) } })).rejects.toBeInstanceOf(InterruptedError);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(cluster.injected.length).toBe(1);
    expect(cluster.healed).toBe(1);
    expect(cluster.closed).toBe(true);
  });

  it('refuses fault kinds the backend cannot inject, and closes it', async () => {
    const cluster = new FakeCluster();
    await expect(run(cluster, { faults: ['disk-full'] })).rejects.toBeInstanceOf(UsageError);
    expect(cluster.closed).toBe(true);
  });

  it('runs every kind the backend supports for `all`, and says which it left out', async () => {
    const cluster = new FakeCluster();
    const result = await run(cluster, { faults: 'all', durationMs: 2_000 });
    expect(result.faults).not.toContain('disk-full');
    expect(result.notes.join('\n')).toContain('disk-full');
  });
});

describe('chaos command line', () => {
  it('reads a full command line', () => {
    const cli = parseCli(['--duration', '60', '--faults', 'kill-sidecar,slow-network', '--seed', '7', '--clickhouse', 'chdb', '--backend', 'kind', '--clients', '3', '--json', '--keep']);
    expect(cli).toEqual({
      options: { durationMs: 60_000, faults: ['kill-sidecar', 'slow-network'], seed: 7, clickhouse: 'chdb', backend: 'kind', clients: 3, keep: true },
      json: true,
    });
  });

  it('takes all and none, and picks a seed when none is given', () => {
    const all = parseCli(['--duration', '1', '--faults', 'all']);
    expect(all !== 'help' && all.options.faults).toBe('all');
    expect(all !== 'help' && Number.isInteger(all.options.seed)).toBe(true);
    const none = parseCli(['--duration', '1', '--faults', 'none']);
    expect(none !== 'help' && none.options.faults).toEqual([]);
  });

  it.each([
    [[], /--faults is required/],
    [['--faults', 'all'], /--duration is required/],
    [['--duration', '0', '--faults', 'all'], /positive integer/],
    [['--duration', 'ten', '--faults', 'all'], /positive integer/],
    [['--duration', '5', '--faults', 'kill-everything'], /unknown fault kind kill-everything/],
    [['--duration', '5', '--faults', 'all', '--clickhouse', 'mysql'], /server or chdb/],
    [['--duration', '5', '--faults', 'all', '--seed', '-1'], /--seed/],
    [['--duration', '5', '--faults', 'all', '--bogus'], /bogus/],
  ])('refuses %j', (argv, message) => {
    expect(() => parseCli(argv)).toThrow(UsageError);
    expect(() => parseCli(argv)).toThrow(message);
  });
});
