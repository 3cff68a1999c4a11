import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FAULT_KINDS, type Fault, type FaultKind } from '../chaos/backend.js';
import { durationBounds, minimalSpanMs, runNemesis, schedule, type NemesisEvent, type ScheduledFault, type ScheduleOptions } from '../chaos/nemesis.js';

const REPLICAS = ['r1', 'r2', 'r3'];
const SESSION_TIMEOUT_MS = 10_000;
const GAP_MIN_MS = 2_000;

const optionsArb = fc.record({
  seed: fc.nat({ max: 2 ** 32 - 1 }),
  durationMs: fc.integer({ min: 0, max: 900_000 }),
  faults: fc.uniqueArray(fc.constantFrom(...FAULT_KINDS), { minLength: 1, maxLength: FAULT_KINDS.length }),
  replicas: fc.integer({ min: 2, max: 5 }).map((n) => Array.from({ length: n }, (_, i) => `r${i + 1}`)),
});

describe('chaos nemesis schedule', () => {
  it('is the same for the same seed, and another for another seed', () => {
    const options: ScheduleOptions = { seed: 42, durationMs: 600_000, faults: FAULT_KINDS, replicas: REPLICAS };
    expect(schedule(options)).toEqual(schedule({ ...options }));
    expect(schedule({ ...options, seed: 43 })).not.toEqual(schedule(options));
  });

  it('keeps one fault at a time, with a gap, inside the run, with sensible durations and targets', () => {
    fc.assert(
      fc.property(optionsArb, (options) => {
        const faults = schedule(options);
        for (const [i, f] of faults.entries()) {
          expect(f.startMs).toBeGreaterThanOrEqual(0);
          expect(f.startMs + f.durationMs).toBeLessThanOrEqual(options.durationMs);
          const { minMs, maxMs } = durationBounds(f.kind, SESSION_TIMEOUT_MS);
          expect(f.durationMs).toBeGreaterThanOrEqual(minMs);
          expect(f.durationMs).toBeLessThanOrEqual(maxMs);
          expect(options.faults).toContain(f.kind);
          expect(options.replicas).toContain(f.target);
          if (f.kind === 'partition-one-way') {
            expect(options.replicas).toContain(f.other);
            expect(f.other).not.toBe(f.target);
          } else expect(f.other).toBeUndefined();
          const next = faults[i + 1];
          if (next) expect(next.startMs).toBeGreaterThanOrEqual(f.startMs + f.durationMs + GAP_MIN_MS);
        }
      }),
    );
  });

  it('has every requested kind whenever the run is long enough for each once', () => {
    fc.assert(
      fc.property(optionsArb, fc.integer({ min: 0, max: 60_000 }), (options, extraMs) => {
        const durationMs = minimalSpanMs({ faults: options.faults }) + extraMs;
        const kinds = new Set(schedule({ ...options, durationMs }).map((f) => f.kind));
        expect([...kinds].sort()).toEqual([...options.faults].sort());
      }),
    );
  });

  it('goes round after round in a long run, so each kind comes back', () => {
    const faults = schedule({ seed: 7, durationMs: 600_000, faults: ['kill-sidecar', 'restart-zookeeper'], replicas: REPLICAS });
    const perKind = (kind: FaultKind) => faults.filter((f) => f.kind === kind).length;
    expect(perKind('kill-sidecar')).toBeGreaterThan(5);
    expect(perKind('restart-zookeeper')).toBeGreaterThan(5);
  });

  it('expires a ZooKeeper session with a cut longer than its timeout, and only disconnects with a shorter one', () => {
    const expire = durationBounds('expire-zookeeper-session', SESSION_TIMEOUT_MS);
    const cut = durationBounds('partition-zookeeper', SESSION_TIMEOUT_MS);
    expect(expire.minMs).toBeGreaterThan(SESSION_TIMEOUT_MS);
    expect(cut.maxMs).toBeLessThan(SESSION_TIMEOUT_MS);
    expect(durationBounds('restart-zookeeper')).toEqual({ minMs: 2_000, maxMs: 8_000 });
    // A backend with a longer session timeout gets longer expiries.
    expect(durationBounds('expire-zookeeper-session', 30_000).minMs).toBeGreaterThan(30_000);
  });

  it('is empty for a run too short for any fault, and for no kinds', () => {
    expect(schedule({ seed: 1, durationMs: 1_000, faults: FAULT_KINDS, replicas: REPLICAS })).toEqual([]);
    expect(schedule({ seed: 1, durationMs: 600_000, faults: [], replicas: REPLICAS })).toEqual([]);
  });
});

describe('chaos nemesis executor', () => {
  const fault = (kind: FaultKind, startMs: number, durationMs: number): ScheduledFault => ({ kind, target: 'r1', startMs, durationMs });

  it('injects each fault on time, heals it after its duration, and reports a failed injection without stopping', async () => {
    const calls: string[] = [];
    const backend = {
      inject: async (f: Fault) => {
        if (f.kind === 'disk-full') throw new Error('no loop device');
        calls.push(`inject ${f.kind}`);
        return { detail: `did ${f.kind}`, heal: async () => void calls.push(`heal ${f.kind}`) };
      },
    };
    const events: NemesisEvent['type'][] = [];
    const started = Date.now();
    const timeline = await runNemesis({
      backend,
      schedule: [fault('kill-sidecar', 10, 30), fault('disk-full', 60, 30), fault('pause-sidecar', 100, 30)],
      onEvent: (e) => events.push(e.type),
      startedAt: started,
    });
    expect(calls).toEqual(['inject kill-sidecar', 'heal kill-sidecar', 'inject pause-sidecar', 'heal pause-sidecar']);
    expect(events).toEqual(['injected', 'healed', 'inject-failed', 'injected', 'healed']);
    expect(timeline.map((t) => [t.kind, t.detail, t.error])).toEqual([
      ['kill-sidecar', 'did kill-sidecar', undefined],
      ['disk-full', '', 'no loop device'],
      ['pause-sidecar', 'did pause-sidecar', undefined],
    ]);
    const first = timeline[0]!;
    expect(first.injectedAt - started).toBeGreaterThanOrEqual(9);
    expect(first.healedAt! - first.injectedAt).toBeGreaterThanOrEqual(29);
    expect(timeline[1]!.healedAt).toBeNull();
  });

  it('heals the fault in effect at once when stopped, and injects no further one', async () => {
    const calls: string[] = [];
    const backend = {
      inject: async (f: Fault) => {
        calls.push(`inject ${f.kind}`);
        return { detail: '', heal: async () => void calls.push(`heal ${f.kind}`) };
      },
    };
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const started = Date.now();
    const timeline = await runNemesis({ backend, schedule: [fault('kill-sidecar', 0, 10_000), fault('kill-clickhouse', 10_100, 100)], signal: stop.signal });
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(calls).toEqual(['inject kill-sidecar', 'heal kill-sidecar']);
    expect(timeline).toHaveLength(1);
  });

  it('reports a heal that failed and goes on', async () => {
    const backend = {
      inject: async () => ({
        detail: '',
        heal: async () => {
          throw new Error('iptables gone');
        },
      }),
    };
    const timeline = await runNemesis({ backend, schedule: [fault('partition-replica', 0, 5), fault('partition-replica', 10, 5)] });
    expect(timeline.map((t) => [t.healedAt, t.healError])).toEqual([
      [null, 'iptables gone'],
      [null, 'iptables gone'],
    ]);
  });
});
