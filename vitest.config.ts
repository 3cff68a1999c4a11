import { defineConfig } from 'vitest/config';

// Integration files run once per ClickHouse backend: Debian's clickhouse-server 18.16 and
// ClickHouse 26.7's engine from chdb. CHORUS_TEST_CLICKHOUSE=server|chdb runs just one.
const backends = process.env.CHORUS_TEST_CLICKHOUSE ? [process.env.CHORUS_TEST_CLICKHOUSE] : ['server', 'chdb'];

export default defineConfig({
  test: {
    // Integration files each start real ZooKeeper and ClickHouse processes: on two cores,
    // running them one at a time is faster and steadier than in parallel.
    fileParallelism: false,
    maxWorkers: 1,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      // What users deploy, checked offline: the Dockerfile (its npm steps played outside Docker,
      // about 2 minutes), the Kubernetes manifests as kubectl kustomize renders them, the kind script.
      { extends: true, test: { name: 'deploy', include: ['test/k8s/**/*.test.ts'] } },
      // The same requests to both backends, in one file: what Chorus relies on, and where they differ.
      { extends: true, test: { name: 'contract', include: ['test/contract/**/*.test.ts'] } },
      // The chaos suite's own tooling (network namespaces, partitions); needs root, skips itself otherwise.
      { extends: true, test: { name: 'chaos', include: ['test/chaos/**/*.test.ts'] } },
      ...backends.map((backend) => ({
        extends: true as const,
        test: {
          name: `clickhouse-${backend}`,
          include: ['test/integration/**/*.test.ts'],
          // The benchmark compares with ReplicatedMergeTree, which needs a server with ZooKeeper.
          exclude: backend === 'chdb' ? ['test/integration/bench.test.ts'] : [],
          env: { CHORUS_TEST_CLICKHOUSE: backend },
        },
      })),
    ],
  },
});
