import { describe, expect, it } from 'vitest';
import { checkCreateQuery, parseManifest } from '../../src/replication/clone.js';

const sha = 'a'.repeat(64);
const manifest = (over: Record<string, unknown> = {}, part: Record<string, unknown> = {}) => ({
  id: '0b6a1c5e-2f7b-4c1e-9d3a-1a2b3c4d5e6f',
  source: 'r1',
  maxLsn: 10,
  applied: [{ first: 1, last: 10 }],
  tables: [
    {
      database: 'default',
      table: 't',
      createQuery: 'CREATE TABLE default.t (`id` UInt64) ENGINE = MergeTree ORDER BY id',
      parts: [{ name: 'all_1_1_0', partitionId: 'all', minBlock: 1, maxBlock: 1, files: [{ name: 'checksums.txt', size: 10, sha256: sha }], checksumsSha256: sha, lsns: [1], ...part }],
    },
  ],
  unreplicated: [],
  ...over,
});

describe("a peer's snapshot manifest", () => {
  it('is accepted as the source writes it', () => {
    expect(parseManifest(manifest(), 'r1').tables[0]!.parts[0]!.name).toBe('all_1_1_0');
  });

  it.each([
    ['a part name that climbs out', {}, { name: '../../etc' }],
    ['a file name that climbs out', {}, { files: [{ name: '../x', size: 1, sha256: sha }] }],
    ['a file in a directory that is not a projection', {}, { files: [{ name: 'a/b', size: 1, sha256: sha }] }],
    ['a negative size', {}, { files: [{ name: 'x.bin', size: -1, sha256: sha }] }],
    ['a hash that is not one', {}, { checksumsSha256: 'zz' }],
    ['an id that is a path', { id: '../../x' }, {}],
  ])('%s is refused', (_what, over, part) => {
    expect(() => parseManifest(manifest(over, part), 'r1')).toThrow(expect.objectContaining({ code: 'PEER_UNAVAILABLE' }));
  });

  it('a table name with a slash is refused', () => {
    const m = manifest();
    (m.tables[0] as { table: string }).table = 'a/b';
    expect(() => parseManifest(m, 'r1')).toThrow(expect.objectContaining({ code: 'PEER_UNAVAILABLE' }));
  });
});

describe('the CREATE TABLE a clone runs', () => {
  const t = (createQuery: string) => ({ database: 'default', table: 't', createQuery });

  it('accepts what system.tables holds on 18.16 and 26', () => {
    checkCreateQuery(t('CREATE TABLE default.t (`day` Date, `id` UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id SETTINGS index_granularity = 8192'));
    checkCreateQuery(t("CREATE TABLE default.t\n(\n    `id` UInt64,\n    `s` String DEFAULT 'a; ENGINE = URL',\n    PROJECTION p\n    (\n        SELECT id\n        ORDER BY s\n    )\n)\nENGINE = ReplacingMergeTree\nORDER BY id"));
  });

  it.each([
    ['another table', 'CREATE TABLE default.other (`id` UInt64) ENGINE = MergeTree ORDER BY id'],
    ['another engine', "CREATE TABLE default.t (`id` UInt64) ENGINE = URL('http://127.0.0.1/x', CSV)"],
    ['a replicated engine', "CREATE TABLE default.t (`id` UInt64) ENGINE = ReplicatedMergeTree('/x', 'r') ORDER BY id"],
    ['a SELECT', 'CREATE TABLE default.t (`id` UInt64) ENGINE = MergeTree ORDER BY id AS SELECT number FROM system.numbers'],
    ['ON CLUSTER', 'CREATE TABLE default.t ON CLUSTER c (`id` UInt64) ENGINE = MergeTree ORDER BY id'],
    ['a view', 'CREATE MATERIALIZED VIEW default.t ENGINE = MergeTree ORDER BY id AS SELECT 1'],
    ['two engines', 'CREATE TABLE default.t (`id` UInt64) ENGINE = MergeTree ORDER BY id ENGINE = Log'],
  ])('refuses %s', (_what, query) => {
    expect(() => checkCreateQuery(t(query))).toThrow(expect.objectContaining({ code: 'PEER_UNAVAILABLE' }));
  });
});

describe('the snapshots a source holds for clones', () => {
  it('are bounded in number and swept with their directories', async () => {
    const { mkdtempSync, existsSync, mkdirSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { Snapshots, MAX_HELD_SNAPSHOTS } = await import('../../src/replication/clone.js');
    const { silentLogger } = await import('../../src/core/logger.js');
    const dataDir = mkdtempSync(join(tmpdir(), 'chorus-snapshots-'));
    // No replicated table: what is tested is the bookkeeping, not the copy.
    const snapshots = new Snapshots(dataDir, {
      self: 'r1',
      ch: { rows: async () => [] } as never,
      catalog: {} as never,
      attacher: { withTablesLocked: (_t: string[], fn: () => Promise<unknown>) => fn() } as never,
      log: { appliedRanges: () => [], maxLsn: () => 0, blockMap: () => [], runningMutations: () => [] } as never,
      databases: ['default'],
      logger: silentLogger(),
    });
    const ids: string[] = [];
    for (let i = 0; i < MAX_HELD_SNAPSHOTS + 2; i++) {
      const m = await snapshots.create();
      mkdirSync(join(snapshots.dir, m.id), { recursive: true });
      ids.push(m.id);
    }
    expect(snapshots.get(ids[0]!)).toBeUndefined();
    expect(existsSync(join(snapshots.dir, ids[0]!))).toBe(false);
    expect(ids.filter((id) => snapshots.get(id)).length).toBe(MAX_HELD_SNAPSHOTS);
    snapshots.sweep(1000, Date.now() + 10_000);
    expect(ids.filter((id) => snapshots.get(id)).length).toBe(0);
    expect(ids.filter((id) => existsSync(join(snapshots.dir, id))).length).toBe(0);
  });
});
