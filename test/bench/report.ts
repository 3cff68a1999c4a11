import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchResult } from './bench.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));

const num = (v: number, digits = 1) => (Number.isFinite(v) ? v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : 'n/a');
const ratio = (chorus: number, rmt: number) => (rmt === 0 ? (chorus === 0 ? '1.00x' : 'n/a') : `${(chorus / rmt).toFixed(2)}x`);

interface Row {
  figure: string;
  rmt: number | null;
  chorus: number;
  digits?: number;
  goal?: string;
  met?: boolean;
}

/** Every figure of the run as one table: RMT, Chorus, Chorus / RMT, the goal and whether it is met. */
export function figureRows(r: BenchResult): Row[] {
  const { rmt, chorus } = r.systems;
  const rows: Row[] = [];
  for (const c of ['c1', 'c8', 'c32'] as const) {
    const conc = c.slice(1);
    const runs = chorus.w1Spread[c].runs.length;
    rows.push({
      figure: `W1 c=${conc} inserts/s${runs > 1 ? `, median of ${runs} runs` : ''}`,
      rmt: rmt.w1[c].insertsPerSec,
      chorus: chorus.w1[c].insertsPerSec,
      goal: '>= 1.0x RMT',
      met: chorus.w1[c].insertsPerSec >= rmt.w1[c].insertsPerSec,
    });
    if (runs > 1) {
      rows.push({ figure: `W1 c=${conc} inserts/s, slowest run`, rmt: rmt.w1Spread[c].min, chorus: chorus.w1Spread[c].min });
      rows.push({ figure: `W1 c=${conc} inserts/s, fastest run`, rmt: rmt.w1Spread[c].max, chorus: chorus.w1Spread[c].max });
    }
    rows.push({ figure: `W1 c=${conc} rows/s`, rmt: rmt.w1[c].rowsPerSec, chorus: chorus.w1[c].rowsPerSec, digits: 0 });
    const zkGoal = c === 'c1' ? 1 : c === 'c32' ? 0.2 : undefined;
    rows.push({
      figure: `W1 c=${conc} ZooKeeper requests per insert`,
      rmt: rmt.w1[c].zkRequestsPerInsert,
      chorus: chorus.w1[c].zkRequestsPerInsert,
      digits: 3,
      goal: zkGoal === undefined ? undefined : `<= ${zkGoal}`,
      met: zkGoal === undefined ? undefined : chorus.w1[c].zkRequestsPerInsert <= zkGoal,
    });
    rows.push({
      figure: `W1 c=${conc} all replicas converged after last ack (ms)`,
      rmt: rmt.w1[c].convergeMs,
      chorus: chorus.w1[c].convergeMs,
      digits: 0,
      goal: c === 'c32' ? "<= RMT's" : undefined,
      met: c === 'c32' ? chorus.w1[c].convergeMs <= rmt.w1[c].convergeMs : undefined,
    });
    const rmtCpu = rmt.w1[c].cpuMsPerInsert;
    const chorusCpu = chorus.w1[c].cpuMsPerInsert;
    if (rmtCpu && chorusCpu) {
      rows.push({ figure: `W1 c=${conc} CPU per insert, whole cluster (ms)`, rmt: rmtCpu.total, chorus: chorusCpu.total });
      rows.push({ figure: `W1 c=${conc} CPU per insert: sidecars (ms)`, rmt: null, chorus: chorusCpu.sidecar });
      rows.push({ figure: `W1 c=${conc} CPU per insert: ClickHouse servers (ms)`, rmt: rmtCpu.clickhouse, chorus: chorusCpu.clickhouse });
      rows.push({ figure: `W1 c=${conc} CPU per insert: ZooKeeper (ms)`, rmt: rmtCpu.zookeeper, chorus: chorusCpu.zookeeper });
    }
  }
  rows.push({
    figure: `ZooKeeper bytes received per insert, window filled with ${chorus.zkBytes.filledWith} inserts`,
    rmt: rmt.zkBytes.bytesPerInsert,
    chorus: chorus.zkBytes.bytesPerInsert,
    digits: 0,
    goal: "<= 0.25x RMT's",
    met: chorus.zkBytes.bytesPerInsert <= 0.25 * rmt.zkBytes.bytesPerInsert,
  });
  rows.push({ figure: 'Lag ack -> visible on each other replica, p50 (ms)', rmt: rmt.lagMs.p50, chorus: chorus.lagMs.p50 });
  rows.push({ figure: 'Lag p99 (ms)', rmt: rmt.lagMs.p99, chorus: chorus.lagMs.p99, goal: "<= RMT's", met: chorus.lagMs.p99 <= rmt.lagMs.p99 });
  rows.push({ figure: 'Lag max (ms)', rmt: rmt.lagMs.max, chorus: chorus.lagMs.max });
  rows.push({ figure: 'W2 large inserts rows/s (send to acknowledgement)', rmt: rmt.w2.rowsPerSec, chorus: chorus.w2.rowsPerSec, digits: 0 });
  rows.push({ figure: 'W2 plain local MergeTree insert rows/s (interleaved, same run)', rmt: rmt.w2.plainRowsPerSec, chorus: chorus.w2.plainRowsPerSec, digits: 0 });
  rows.push({ figure: 'W2 overhead vs plain local insert (%)', rmt: rmt.w2.overheadVsPlain * 100, chorus: chorus.w2.overheadVsPlain * 100, goal: '<= 15%', met: chorus.w2.overheadVsPlain <= 0.15 });
  rows.push({ figure: 'W2 ZooKeeper requests per insert', rmt: rmt.w2.zkRequestsPerInsert, chorus: chorus.w2.zkRequestsPerInsert, digits: 2 });
  rows.push({ figure: `W3 ${chorus.w3.tables} tables: inserts/s`, rmt: rmt.w3.insertsPerSec, chorus: chorus.w3.insertsPerSec, goal: '>= 1.0x RMT', met: chorus.w3.insertsPerSec >= rmt.w3.insertsPerSec });
  rows.push({ figure: 'W3 ZooKeeper requests per insert', rmt: rmt.w3.zkRequestsPerInsert, chorus: chorus.w3.zkRequestsPerInsert, digits: 3 });
  rows.push({
    figure: 'W3 znodes owned (RMT: /clickhouse; Chorus: /chorus)',
    rmt: rmt.w3.znodesOwned,
    chorus: chorus.w3.znodesOwned,
    digits: 0,
    goal: '>= 500x fewer',
    met: chorus.w3.znodesOwned * 500 <= rmt.w3.znodesOwned,
  });
  rows.push({ figure: 'W3 znodes per table', rmt: rmt.w3.znodesPerTable, chorus: chorus.w3.znodesOwned / chorus.w3.tables, digits: 2 });
  rows.push({ figure: 'W3 znodes in ZooKeeper in all (mntr)', rmt: rmt.w3.znodesTotal, chorus: chorus.w3.znodesTotal, digits: 0 });
  rows.push({ figure: 'W4 idle ZooKeeper requests/s', rmt: rmt.w4.zkRequestsPerSec, chorus: chorus.w4.zkRequestsPerSec, digits: 2, goal: 'session pings only', met: chorus.w4.zkRequestsPerSec <= 1 });
  rows.push({ figure: 'Sidecar RSS, largest of 3 (MB)', rmt: null, chorus: chorus.rssMb.sidecarMax ?? 0, goal: '<= 120', met: (chorus.rssMb.sidecarMax ?? 0) <= 120 });
  rows.push({ figure: 'ClickHouse RSS, largest of 3 (MB)', rmt: rmt.rssMb.clickhouseMax, chorus: chorus.rssMb.clickhouseMax });
  if (chorus.transfer) {
    rows.push({ figure: `Part transfer MB/s (${num(chorus.transfer.bytes / 1024 / 1024, 1)} MB part, verify + fsync)`, rmt: null, chorus: chorus.transfer.mbPerSec });
    rows.push({
      figure: 'cp of the same part files MB/s (same disk)',
      rmt: null,
      chorus: chorus.transfer.cpMbPerSec,
      goal: 'transfer >= 80% of cp',
      met: chorus.transfer.mbPerSec >= 0.8 * chorus.transfer.cpMbPerSec,
    });
    rows.push({ figure: 'cp + fsync of every file and the dir MB/s (as durable as the transfer)', rmt: null, chorus: chorus.transfer.cpFsyncMbPerSec });
  }
  return rows;
}

export function renderReport(r: BenchResult): string {
  const rows = figureRows(r);
  const table = [
    '| figure | ReplicatedMergeTree | Chorus | Chorus / RMT | goal | met |',
    '| --- | ---: | ---: | ---: | --- | --- |',
    ...rows.map(
      (row) =>
        `| ${row.figure} | ${row.rmt === null ? '-' : num(row.rmt, row.digits)} | ${num(row.chorus, row.digits)} | ${row.rmt === null ? '-' : ratio(row.chorus, row.rmt)} | ${row.goal ?? ''} | ${row.met === undefined ? '' : row.met ? 'yes' : '**no**'} |`,
    ),
  ].join('\n');
  const m = r.machine;
  const analysisFile = join(HERE, 'analysis.md');
  const analysis = existsSync(analysisFile) ? readFileSync(analysisFile, 'utf8').trim() : '';
  const c = r.systems.chorus;
  return `# Chorus vs ReplicatedMergeTree — benchmark report

${r.quick ? '**Quick run (--quick): sizes are tiny, figures are not meaningful.**\n\n' : ''}Run started ${r.startedAt}, by \`npm run bench\` (\`test/bench/bench.ts\`), both systems in one invocation.

## Machine

${m.cpus} x ${m.cpuModel}, ${m.memoryGb} GiB memory, Linux ${m.kernel}, Node ${m.node}, ClickHouse ${m.clickhouse}, ZooKeeper ${m.zookeeper} (Debian packages).
Everything ran on this one machine, on loopback: 1 ZooKeeper, 3 ClickHouse servers and, for Chorus, 3 sidecars.

## Method

- Each system gets a fresh dev cluster (\`src/dev\`, the code \`npm start\` uses) with a fresh ZooKeeper and the same settings.
  RMT: tables \`ReplicatedMergeTree('/clickhouse/tables/{shard}/<t>', '{replica}')\`, inserts sent to ClickHouse's HTTP port.
  Chorus: tables \`MergeTree\`, inserts sent to the sidecar's HTTP port. Both: \`PARTITION BY toYYYYMM(day) ORDER BY id\`, TSV bodies,
  inserts round-robin over the 3 replicas, the very same rows (seeded generator).
- **W1** small inserts of 1 to 100 rows (each into one of six monthly partitions, in turn) at concurrency 1, 8 and 32 (${c.w1.c1.inserts}, ${c.w1.c8.inserts} and ${c.w1.c32.inserts} inserts),
  ${c.w1Spread.c1.runs.length} times each, the same plan on a new table each time; the run with the median inserts/s is reported, with the slowest and fastest.
  CPU per insert: utime + stime of every process of each kind (\`/proc\`) from the first send until every replica held every row, divided by inserts.
  **W2** ${c.w2.inserts} inserts of ${num(c.w2.rows / c.w2.inserts, 0)} rows each, one at a time, each timed from send to acknowledgement,
  replication let settle between them (not timed); interleaved with them, the same volume is sent to a plain MergeTree table on one
  server (no replication) and timed the same way. **W3** ${c.w3.inserts} inserts spread over ${c.w3.tables} tables at concurrency 4.
  **W4** ${num(c.w4.seconds, 0)} s without writes.
- ZooKeeper requests: delta of \`zk_packets_received\` from \`mntr\` over the run (pings included), divided by inserts.
  ZooKeeper bytes: delta of \`zk_bytes_received_count\` over ${c.zkBytes.inserts} sequential one-row inserts into one table, after
  ${c.zkBytes.filledWith} inserts at concurrency 8 filled the dedup window (1,000 block IDs for both).
  Znodes: \`zk_znode_count\`, and the znodes under each system's own root, counted with a session opened only for that.
- Throughput: wall time from the first send to the last acknowledgement. Convergence: from the last acknowledgement until
  \`count()\` is equal on all replicas.
- Lag: ${c.lagMs.samples / 2} sequential single-row inserts; after each acknowledgement the two other replicas' ClickHouse is polled
  every 2 ms until the row is visible; one sample per other replica.
- Part transfer: the largest part in replica 1's part store downloaded through Chorus's interserver port by Chorus's own fetch
  (streamed, SHA-256 of every file checked, fsynced, renamed), 5 times, median; next to \`cp -r\` of the same files on the same disk,
  without fsync and with every file and the directory fsynced.
- RSS: \`VmRSS\` after all workloads.

## Figures

${table}

## Analysis

${analysis || '_No analysis written for this run._'}
`;
}
