import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/core/async.js';
import { devKill, devStart, readCluster } from '../../src/dev/cluster.js';
import { isAlive } from '../../src/dev/processes.js';
import type { CrashPoint } from '../../src/faults/faults.js';
import { columnsProblem } from '../../src/parts/completeness.js';
import { TestCluster } from '../support/cluster.js';

/**
 * Issue 4: sidecars and ClickHouse servers that die at the worst moments, replicas that are
 * away while others take inserts. Every test ends with every replica holding every
 * acknowledged or retried insert exactly once.
 */
const ROW_HASH = 'cityHash64(day, id, payload)';
const DDL = (name: string) => `CREATE TABLE ${name} (day Date, id UInt64, payload String) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`;

let nextId = 1;
function rows(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++, nextId++) out += `2026-11-${String(1 + (nextId % 28)).padStart(2, '0')}\t${nextId}\trow ${nextId}\n`;
  return out;
}

describe('replicas that die or fall behind converge', () => {
  let cluster: TestCluster;
  const TABLE = 'default.crashes';
  let expected = 0;

  beforeAll(async () => {
    cluster = await TestCluster.start({
      replicas: 3,
      sidecarConfig: { testFaults: true, 'gossip.allocateTimeoutMs': 2000, 'replication.retryDelayMs': 200 },
    });
    await cluster.onEvery(DDL(TABLE));
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const insert = (replica: number, body: string) => cluster.chorus(replica, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body });

  /** Sends `body` again until it is acknowledged (at most 50 tries, 200 ms apart), as a client retrying would; the last answer. */
  const insertUntilAcknowledged = async (replica: number, body: string): Promise<Response> => {
    let res = await insert(replica, body);
    for (let attempt = 1; attempt < 50 && res.status !== 200; attempt++) {
      await res.text();
      await sleep(200);
      res = await insert(replica, body);
    }
    return res;
  };

  const waitDead = async (name: string) => {
    const pid = readCluster(cluster.info.dir).replicas.find((r) => r.name === name)!.pids.sidecar;
    for (let i = 0; i < 200 && isAlive(pid); i++) await sleep(50);
    expect(isAlive(pid)).toBe(false);
  };

  const expectConverged = async (timeoutMs = 30_000) => {
    const fingerprints = await cluster.waitConverged(TABLE, ROW_HASH, expected, timeoutMs);
    expect(fingerprints.map((f) => f.count)).toEqual([expected, expected, expected]);
    expect(new Set(fingerprints.map((f) => f.hash)).size).toBe(1);
  };

  it.each<[CrashPoint]>([['insert.after-allocate'], ['insert.after-record'], ['attach.after-attach']])(
    'the origin killed at %s: after restart, the insert and its retry are stored once',
    async (point) => {
      await cluster.armFaults(0, { crashAt: point } as never);
      const body = rows(5);
      const first = await insert(0, body).then(
        (res) => res.status,
        () => 'connection lost',
      );
      expect(first).toBe('connection lost');
      await waitDead('r1');
      await devStart(cluster.info.dir, 'r1', 'sidecar');
      // The client never got an answer, so it retries, here through another replica.
      const retry = await insertUntilAcknowledged(1, body);
      expect(retry.status).toBe(200);
      // Recovery recorded the interrupted insert at start-up: the retry is answered as a
      // duplicate of it, not stored a second time.
      expect(retry.headers.get('x-chorus-deduplicated')).toBe('1');
      expected += 5;
      await expectConverged();
    },
  );

  it('kill -9 the moment an insert is acknowledged, page cache dropped: every acknowledged insert is on every replica', async () => {
    for (let round = 0; round < 3; round++) {
      const res = await insert(0, rows(4));
      expect(res.status).toBe(200);
      await devKill(cluster.info.dir, 'r1', 'sidecar', 'KILL');
      expected += 4;
      // Clean pages go; what is dirty stays in memory. A test cannot cut power, but it can make
      // sure that what the restarted sidecar reads comes from the files as written.
      try {
        writeFileSync('/proc/sys/vm/drop_caches', '1');
      } catch {
        // not root, or a read-only /proc: the kill alone still runs
      }
      await devStart(cluster.info.dir, 'r1', 'sidecar');
    }
    await expectConverged();
  });

  it('an attached part that cannot be read back is looked for again, never attached twice', async () => {
    // The fast path on disk, the search after ATTACH and the first retry's search all fail to
    // read: the origin answers ATTACH_FAILED with the LSN it recorded, and keeps looking.
    await cluster.armFaults(0, { unreadableParts: 3 });
    const body = rows(6);
    const first = await insert(0, body);
    const text = await first.text();
    expect(first.status).toBe(500);
    expect(first.headers.get('x-chorus-error-code')).toBe('CHORUS_ATTACH_FAILED');
    const lsn = /recorded as LSN (\d+)/.exec(text)?.[1];
    expect(lsn).toBeDefined();
    const retry = await insertUntilAcknowledged(0, body);
    expect(retry.status).toBe(200);
    expect(retry.headers.get('x-chorus-deduplicated')).toBe('1');
    expect(retry.headers.get('x-chorus-lsn')).toBe(lsn);
    expected += 6;
    await expectConverged();
  });

  // 18.16 only (Dialect.mayLeavePartsIncomplete): later releases fail the ATTACH instead.
  it.skipIf(process.env.CHORUS_TEST_CLICKHOUSE === 'chdb')("a part attached with an empty columns.txt (18.16's ATTACH on a full disk) is mended, and survives ClickHouse's restart", async () => {
    // Without the mend 18.16 deletes such a part at its next start ("broken part ... impossible
    // to repair"): its rows are gone from that replica only.
    await cluster.armFaults(1, { emptyAttachedColumns: 1 });
    const res = await insert(0, rows(7));
    expect(res.status).toBe(200);
    expected += 7;
    await expectConverged();
    await devKill(cluster.info.dir, 'r2', 'clickhouse', 'KILL');
    await devStart(cluster.info.dir, 'r2', 'clickhouse');
    await expectConverged();
    const parts = await cluster.clickhouse(1, `SELECT path FROM system.parts WHERE database = 'default' AND table = 'crashes' AND active FORMAT TabSeparated`);
    for (const path of parts.trim().split('\n')) expect(columnsProblem(path), path).toBeUndefined();
  });

  it('a follower killed in the middle of writing a received part (pushed with its entry) gets it again after restart', async () => {
    await cluster.armFaults(1, { crashAt: 'fetch.mid-transfer' } as never);
    const res = await insert(0, rows(200));
    expect(res.status).toBe(200);
    expected += 200;
    await waitDead('r2');
    await devStart(cluster.info.dir, 'r2', 'sidecar');
    await expectConverged();
  });

  it('ClickHouse killed during a stream of inserts: its replica refuses cleanly, all converge after restart', async () => {
    let stop = false;
    const outcomes = { ok: 0, refused: 0, codes: new Set<string>() };
    const writers = [0, 1, 2].map(async (replica) => {
      while (!stop) {
        const body = rows(3);
        const res = await insert(replica, body);
        if (res.status === 200) {
          await res.text();
          outcomes.ok++;
          expected += 3;
        } else {
          outcomes.refused++;
          outcomes.codes.add(res.headers.get('x-chorus-error-code') ?? `HTTP ${res.status}`);
          // A refused insert is retried later, as a client would. What the refusal said is kept:
          // "recorded as LSN n" promises the rows are stored (the retry must be a duplicate of
          // n); any other refusal promises nothing was (the retry must store them anew).
          pendingRetries.push({ body, recordedAs: /recorded as LSN (\d+)/.exec(await res.text())?.[1] });
        }
        await sleep(10);
      }
    });
    const pendingRetries: Array<{ body: string; recordedAs: string | undefined }> = [];
    await sleep(1000);
    await devKill(cluster.info.dir, 'r1', 'clickhouse', 'KILL');
    await sleep(2000);
    const ready = await fetch(`${cluster.replica(0).http}/readyz`);
    expect(ready.status).toBe(503);
    await devStart(cluster.info.dir, 'r1', 'clickhouse');
    await sleep(1000);
    stop = true;
    await Promise.all(writers);
    console.log(`inserts during the ClickHouse kill: ${outcomes.ok} acknowledged, ${outcomes.refused} refused with ${[...outcomes.codes].join(', ')}`);
    expect(outcomes.refused).toBeGreaterThan(0);
    for (const code of outcomes.codes) expect(code).toMatch(/^CHORUS_/);
    // Every retry that is acknowledged means the rows are stored once: either this retry
    // stored them, or (deduplicated) the refused attempt had been recorded and is applied.
    for (const { body, recordedAs } of pendingRetries) {
      const res = await insert(1, body);
      expect(res.status).toBe(200);
      if (recordedAs) {
        expect(res.headers.get('x-chorus-deduplicated')).toBe('1');
        expect(res.headers.get('x-chorus-lsn')).toBe(recordedAs);
      } else expect(res.headers.get('x-chorus-deduplicated')).toBe('0');
      expected += 3;
    }
    await expectConverged();
  });

  it('DROP PARTITION and TRUNCATE racing with inserts into that partition: every replica ends identical', async () => {
    const RACE = 'default.racing';
    await cluster.onEvery(DDL(RACE));
    let stop = false;
    let october = 0;
    let seq = 0;
    /** Sends until acknowledged: a 503 (the insert waits behind a drop) is retried, and deduplicated. */
    const send = async (replica: number, body: string) => {
      for (;;) {
        const res = await cluster.chorus(replica, { query: `INSERT INTO ${RACE} FORMAT TabSeparated`, body });
        await res.text();
        if (res.status === 200) return;
        expect(res.status).toBe(503);
        await sleep(50);
      }
    };
    const writers = [0, 1, 2].map(async (replica) => {
      while (!stop) {
        const n = ++seq;
        // Mostly into November (the partition dropped), some into October (never dropped).
        const oct = n % 4 === 0;
        await send(replica, `2026-${oct ? '10' : '11'}-0${1 + (n % 9)}\t${n}\tr${replica}\n`);
        if (oct) october++;
      }
    });
    const op = async (replica: number, query: string) => {
      for (;;) {
        const res = await cluster.chorus(replica, { query });
        const text = await res.text();
        if (res.status === 200) return res.headers.get('x-chorus-lsn');
        expect(res.status, text).toBe(503);
        await sleep(100);
      }
    };
    await sleep(800);
    const dropLsn = await op(1, `ALTER TABLE ${RACE} DROP PARTITION 202611`);
    expect(Number(dropLsn)).toBeGreaterThan(0);
    await sleep(800);
    await op(2, `ALTER TABLE ${RACE} DROP PARTITION ID '202611'`);
    await sleep(800);
    stop = true;
    await Promise.all(writers);
    // Identical everywhere, and stable: every replica applied the same entries in the same order.
    let last = '';
    let stableSince = Date.now();
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; await sleep(200)) {
      const f = await cluster.fingerprints(RACE, ROW_HASH);
      const key = JSON.stringify(f);
      if (new Set(f.map((x) => `${x.count}:${x.hash}`)).size === 1 && key === last) {
        if (Date.now() - stableSince > 1000) break;
      } else stableSince = Date.now();
      last = key;
    }
    const f = await cluster.fingerprints(RACE, ROW_HASH);
    expect(new Set(f.map((x) => `${x.count}:${x.hash}`)).size).toBe(1);
    for (let i = 0; i < 3; i++) {
      expect(Number((await cluster.clickhouse(i, `SELECT count() FROM ${RACE} WHERE toYYYYMM(day) = 202610`)).trim())).toBe(october);
    }
    console.log(`racing drops: ${seq} inserts, ${f[0]!.count} rows left on every replica (${october} in October)`);

    await op(0, `TRUNCATE TABLE ${RACE}`);
    await send(2, '2026-11-05\t999999\tafter\n');
    const after = await cluster.waitConverged(RACE, ROW_HASH, 1, 15_000);
    expect(after.map((x) => x.count)).toEqual([1, 1, 1]);
  });

  it('a replica stopped while 1,000 inserts land on the others catches up', async () => {
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'KILL');
    await devKill(cluster.info.dir, 'r3', 'clickhouse', 'KILL');
    const bodies = Array.from({ length: 1000 }, () => rows(2));
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < bodies.length) {
          const i = next++;
          const res = await insert(i % 2, bodies[i]!);
          expect(res.status).toBe(200);
        }
      }),
    );
    expected += 2000;
    const started = Date.now();
    await devStart(cluster.info.dir, 'r3', 'all');
    await expectConverged(30_000);
    const seconds = (Date.now() - started) / 1000;
    console.log(`r3 caught up on 1,000 entries in ${seconds.toFixed(1)} s from its start: ${(1000 / seconds).toFixed(0)} entries/s`);
    expect(seconds).toBeLessThanOrEqual(30);
  });

  it('a wiped replica clones a snapshot from a peer and converges; parts written around Chorus are reported, not copied', async () => {
    await cluster.onEvery(DDL('default.direct'));
    await cluster.onEvery(DDL('default.bulk'));
    // Enough data for the clone's rate to mean something: 200,000 rows through Chorus.
    let bulk = '';
    for (let i = 0; i < 200_000; i++) bulk += `2026-11-${String(1 + (i % 28)).padStart(2, '0')}\t${i}\tbulk row ${i} ${(i * 2654435761) % 1_000_000}\n`;
    expect((await cluster.chorus(0, { query: 'INSERT INTO default.bulk FORMAT TabSeparated', body: bulk })).status).toBe(200);
    expect((await cluster.waitConverged('default.bulk', ROW_HASH, 200_000, 30_000)).map((f) => f.count)).toEqual([200_000, 200_000, 200_000]);
    // Written straight to r1's ClickHouse, bypassing Chorus.
    await cluster.clickhouse(0, "INSERT INTO default.direct VALUES ('2026-11-01', 1, 'around chorus')");
    await devKill(cluster.info.dir, 'r3', 'sidecar', 'TERM');
    const { devWipe } = await import('../../src/dev/cluster.js');
    await devWipe(cluster.info.dir, 'r3');
    const started = Date.now();
    await devStart(cluster.info.dir, 'r3', 'all');
    await expectConverged(60_000);
    const seconds = (Date.now() - started) / 1000;
    const status = (await (await fetch(`${cluster.replica(2).http}/_chorus/status`)).json()) as {
      clone: { state: string; source: string; bytesDone: number; bytesPerSec: number; parts: number; unreplicated: number };
    };
    console.log(
      `r3 cloned ${status.clone.parts} parts, ${(status.clone.bytesDone / 1024 / 1024).toFixed(1)} MB from ${status.clone.source} at ` +
        `${(status.clone.bytesPerSec / 1024 / 1024).toFixed(1)} MB/s; identical to its peers ${seconds.toFixed(1)} s after its start`,
    );
    expect(status.clone.state).toBe('done');
    expect(status.clone.unreplicated).toBeGreaterThanOrEqual(1);
    expect((await cluster.clickhouse(2, 'SELECT count() FROM default.direct')).trim()).toBe('0');
    expect((await cluster.waitConverged('default.bulk', ROW_HASH, 200_000, 10_000)).map((f) => f.count)).toEqual([200_000, 200_000, 200_000]);
    // The clone takes new inserts like any replica.
    const res = await insert(2, rows(4));
    expect(res.status).toBe(200);
    expected += 4;
    await expectConverged();
  });
});
