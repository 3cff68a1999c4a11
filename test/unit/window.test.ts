import { describe, expect, it } from 'vitest';
import { applyBatch, barrierMarker, blockKey, chunksToWrite, EMPTY_STATE, removeLsns, windowEntries, type AllocatorState, type WindowLimits } from '../../src/allocator/window.js';
import { decodeChunk, decodeHead, encodeChunk, encodeHead } from '../../src/allocator/codec.js';

const req = (nonce: string, ...blockIds: Array<string | null>) => ({ nonce, origin: 'r1', blockIds });
/** A window of `entries` block IDs in chunks of `chunkEntries`, without an age bound. */
const limits = (entries: number, chunkEntries = 100, seconds = 0): WindowLimits => ({ entries, chunkEntries, seconds });
const keys = (state: AllocatorState) => windowEntries(state).map((e) => e.key);

describe('allocator window', () => {
  it('assigns consecutive LSNs to a whole batch in one step', () => {
    const { state, results } = applyBatch(EMPTY_STATE, [req('a', 'p_1', 'p_2'), req('b', 'p_3')], limits(10));
    expect(results).toEqual([
      [
        { lsn: 1, duplicate: false, barrier: 0 },
        { lsn: 2, duplicate: false, barrier: 0 },
      ],
      [{ lsn: 3, duplicate: false, barrier: 0 }],
    ]);
    expect(state.next).toBe(4);
  });

  it('answers a block already in the window with its first LSN, in the same batch or a later one', () => {
    const first = applyBatch(EMPTY_STATE, [req('a', 'p_1'), req('b', 'p_1')], limits(10));
    expect(first.results[1]).toEqual([{ lsn: 1, duplicate: true, barrier: 0 }]);
    const second = applyBatch(first.state, [req('c', 'p_1')], limits(10));
    expect(second.results[0]).toEqual([{ lsn: 1, duplicate: true, barrier: 0 }]);
    expect(second.changed).toBe(false);
    expect(second.state.next).toBe(2);
  });

  it('recognises a retried request by its nonce: its own entries, not duplicates, and nothing allocated twice', () => {
    const landed = applyBatch(EMPTY_STATE, [req('n1', 'p_1', null, 'p_2')], limits(10)).state;
    const retry = applyBatch(landed, [req('n1', 'p_1', null, 'p_2')], limits(10));
    expect(retry.results[0]).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
      { lsn: 3, duplicate: false, barrier: 0 },
    ]);
    expect(retry.changed).toBe(false);
    expect(retry.state.next).toBe(4);
  });

  it('never deduplicates entries without a block ID', () => {
    const { results } = applyBatch(EMPTY_STATE, [req('a', null), req('b', null)], limits(10));
    expect(results.flat().map((r) => r.lsn)).toEqual([1, 2]);
  });

  it('keeps only the newest window-size block IDs', () => {
    let state = EMPTY_STATE;
    for (let i = 1; i <= 5; i++) state = applyBatch(state, [req(`n${i}`, `p_${i}`)], limits(3, 1)).state;
    expect(keys(state)).toEqual(['p_3', 'p_4', 'p_5'].map(blockKey));
    expect(applyBatch(state, [req('x', 'p_1')], limits(3, 1)).results[0]).toEqual([{ lsn: 6, duplicate: false, barrier: 0 }]);
  });

  it("gives every entry of a table the newest drop of that table below it as its barrier", () => {
    const r = (nonce: string, blockId: string | null, table: string) => ({ nonce, origin: 'r1', blockIds: [blockId], tables: [table] });
    let state = EMPTY_STATE;
    const step = (request: ReturnType<typeof r>) => {
      const out = applyBatch(state, [request], limits(100));
      state = out.state;
      return out.results[0]![0]!;
    };
    expect(step(r('a', 'p_1', 'db.t'))).toEqual({ lsn: 1, duplicate: false, barrier: 0 });
    expect(step(r('b', barrierMarker('db.t'), 'db.t'))).toEqual({ lsn: 2, duplicate: false, barrier: 0 });
    expect(step(r('c', 'p_2', 'db.t'))).toEqual({ lsn: 3, duplicate: false, barrier: 2 });
    expect(step(r('d', 'p_3', 'db.u'))).toEqual({ lsn: 4, duplicate: false, barrier: 0 });
    // Markers are never answered as duplicates of each other.
    expect(step(r('e', barrierMarker('db.t'), 'db.t'))).toEqual({ lsn: 5, duplicate: false, barrier: 2 });
    expect(step(r('f', 'p_4', 'db.t'))).toEqual({ lsn: 6, duplicate: false, barrier: 5 });
  });

  it('removeLsns takes voided LSNs out of the window: their blocks get new LSNs, and the next LSN stays', () => {
    const { state } = applyBatch(EMPTY_STATE, [req('a', 'p_1', 'p_2', null)], limits(10));
    const removed = removeLsns(state, [2, 3, 99]);
    expect(removed.changed).toBe(true);
    expect(removed.state.next).toBe(4);
    expect(windowEntries(removed.state).map((e) => [e.key, e.lsn, e.origin, e.nonce])).toEqual([[blockKey('p_1'), 1, 'r1', 'a']]);
    // p_1 is still a duplicate; p_2, voided, is allocated again (never below the next LSN).
    expect(applyBatch(removed.state, [req('b', 'p_1', 'p_2')], limits(10)).results[0]).toEqual([
      { lsn: 1, duplicate: true, barrier: 0 },
      { lsn: 4, duplicate: false, barrier: 0 },
    ]);
    const none = removeLsns(removed.state, [2, 42]);
    expect(none.changed).toBe(false);
    expect(none.state).toBe(removed.state);
  });

  it('recognises a request by its nonce only while its entries are in the window; after the window slides, a retry is a new allocation', () => {
    const landed = applyBatch(EMPTY_STATE, [req('n1', 'p_1', null)], limits(3, 1)).state;
    // Within the window: the retry gets its own LSNs back.
    expect(applyBatch(landed, [req('n1', 'p_1', null)], limits(3, 1)).results[0]).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    // Partly slid out: the entry still in the window is recognised, the one slid out is allocated again.
    let state = applyBatch(landed, [req('x', 'q_1'), req('y', 'q_2')], limits(3, 1)).state;
    expect(windowEntries(state).map((e) => e.lsn)).toEqual([2, 3, 4]);
    expect(applyBatch(state, [req('n1', 'p_1', null)], limits(3, 1)).results[0]).toEqual([
      { lsn: 5, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    // Wholly slid out: nothing of n1 is known; the retry is allocated anew and LSNs 1 and 2 are
    // the origin's to record or void (recovery finds no trace of them by nonce once they left).
    state = applyBatch(state, [req('z', 'q_3'), req('w', 'q_4')], limits(3, 1)).state;
    expect(windowEntries(state).some((e) => e.nonce === 'n1')).toBe(false);
    expect(applyBatch(state, [req('n1', 'p_1', null)], limits(3, 1)).results[0]).toEqual([
      { lsn: 7, duplicate: false, barrier: 0 },
      { lsn: 8, duplicate: false, barrier: 0 },
    ]);
  });

  describe('chunks', () => {
    /** Allocates `n` single-block inserts one by one, as a shard does without concurrency; returns every state. */
    const fill = (n: number, l: WindowLimits, start: AllocatorState = EMPTY_STATE, at = 1_000_000, tag = '202611') => {
      const states = [start];
      for (let i = 0; i < n; i++) {
        const nonce = Buffer.from([i & 0xff, (i >> 8) & 0xff, (i >> 16) & 0xff, 1, 2, 3]).toString('base64url');
        states.push(applyBatch(states.at(-1)!, [{ nonce, origin: `r${(i % 3) + 1}`, blockIds: [`${tag}_${i}_${'f'.repeat(32)}`] }], l, at).state);
      }
      return states;
    };

    it('an allocation rewrites the head only, except the one that seals a chunk, which writes that chunk once', () => {
      const states = fill(1_000, limits(300, 100));
      const written = states.slice(1).map((s, i) => chunksToWrite(states[i]!, s).length);
      expect(written.filter((n) => n === 1).length).toBe(10);
      expect(written.filter((n) => n > 1).length).toBe(0);
      // Every 100th allocation seals, and only those.
      written.forEach((n, i) => expect(n).toBe((i + 1) % 100 === 0 ? 1 : 0));
    });

    it('keeps at least the newest W block IDs and less than W plus a chunk, in a fixed set of slots', () => {
      const l = limits(300, 100);
      const states = fill(2_000, l);
      for (const [i, s] of states.entries()) {
        const held = windowEntries(s).length;
        expect(held).toBeGreaterThanOrEqual(Math.min(i, 300));
        expect(held).toBeLessThan(300 + 100);
        expect(s.slots).toBeLessThanOrEqual(4);
      }
      const last = states.at(-1)!;
      // The newest 300 are deduplicated, the older ones are not.
      const again = (i: number) => applyBatch(last, [req('x', `202611_${i}_${'f'.repeat(32)}`)], l, 1_000_000).results[0]![0]!.duplicate;
      expect(again(1_999)).toBe(true);
      expect(again(1_700)).toBe(true);
      expect(again(1_000)).toBe(false);
    });

    it('bytes per allocation: bounded by the chunk size, about the same for a window of 1,000 or 20,000', () => {
      const headBytes = (entries: number) => {
        const l = limits(entries, 100);
        const blockIds = Array.from({ length: entries }, (_, i) => `old_${i}`);
        const full = applyBatch(EMPTY_STATE, [{ nonce: 'bulk', origin: 'r1', blockIds }], l, 1_000_000).state;
        return Math.max(...fill(200, l, full).map((s) => encodeHead(s).length));
      };
      const small = headBytes(1_000);
      const large = headBytes(20_000);
      // About 18 bytes per open entry, at most 99 of them, plus one descriptor per chunk.
      expect(small).toBeLessThan(2_000);
      expect(large - small).toBeLessThan(5 * 200);
    });

    it('forgets block IDs older than the age bound at the next write, a sealed chunk once its newest entry is', () => {
      const l = limits(1_000, 10, 3_600);
      const old = fill(25, l, EMPTY_STATE, 1_000_000).at(-1)!;
      expect(old.sealed.length).toBe(2);
      const later = applyBatch(old, [req('late', 'q_1')], l, 1_000_000 + 3_601).state;
      expect(windowEntries(later).map((e) => e.nonce)).toEqual(['late']);
      expect(later.sealed).toEqual([]);
      expect(later.next).toBe(old.next + 1);
      // Within the bound nothing is forgotten.
      expect(windowEntries(applyBatch(old, [req('soon', 'q_2')], l, 1_000_000 + 3_600).state).length).toBe(26);
    });

    it('a voided LSN in a sealed chunk rewrites that chunk alone, in its slot', () => {
      const l = limits(1_000, 10);
      const states = fill(35, l);
      const before = states.at(-1)!;
      const { state, changed } = removeLsns(before, [15]);
      expect(changed).toBe(true);
      const rewritten = chunksToWrite(before, state);
      expect(rewritten.map((c) => [c.slot, c.sealId, c.entries.length])).toEqual([[1, 11, 9]]);
      expect(windowEntries(state).map((e) => e.lsn)).not.toContain(15);
      // A chunk emptied by voids is dropped, not written.
      const emptied = removeLsns(state, [11, 12, 13, 14, 16, 17, 18, 19, 20]).state;
      expect(chunksToWrite(state, emptied)).toEqual([]);
      expect(emptied.sealed.map((c) => c.slot)).toEqual([0, 2]);
      // The freed slot is reused by the next chunk sealed.
      expect(fill(10, l, emptied, 1_000_000, 'later').at(-1)!.sealed.map((c) => c.slot)).toEqual([0, 2, 1]);
    });

    it('round-trips head and chunks through the binary encoding, reads format 1 (JSON) and refuses what it cannot read', () => {
      const states = fill(257, limits(1_000, 100));
      const state = states.at(-1)!;
      const head = decodeHead(encodeHead(state));
      expect(head.next).toBe(258);
      expect(head.open).toEqual(state.open);
      const sealed = head.sealed.map((ref) => decodeChunk(encodeChunk(state.sealed.find((c) => c.slot === ref.slot)!), ref));
      expect(sealed).toEqual(state.sealed);
      // Barriers, entries without a block, nonces of any shape, many origins.
      const odd = applyBatch(state, [
        { nonce: 'not-a-base64-nonce', origin: 'a replica with a long name', blockIds: [barrierMarker('db.t'), null], tables: ['db.t', 'db.t'] },
        ...Array.from({ length: 20 }, (_, i) => ({ nonce: `n${i}`, origin: `o${i}`, blockIds: [`x_${i}`] })),
      ], limits(1_000, 100), 999_000).state;
      expect(decodeHead(encodeHead(odd)).open).toEqual(odd.open);
      // About 18 bytes an entry.
      expect(encodeHead(state).length / state.open.length).toBeLessThan(20);
      // A chunk rewritten after the head was read is not taken for the one the head names.
      const ref = head.sealed[0]!;
      expect(decodeChunk(encodeChunk(state.sealed[0]!), { ...ref, count: ref.count - 1 })).toBeUndefined();
      expect(decodeChunk(encodeChunk(state.sealed[0]!), { ...ref, sealId: ref.sealId + 1 })).toBeUndefined();
      // Format 1, as Chorus wrote it before: the whole window as JSON.
      const v1 = decodeHead(Buffer.from(JSON.stringify({ v: 1, next: 4, w: [['p_1', 1, 'r1', 'a'], [barrierMarker('db.t'), 2, 'r2', 'b'], ['', 3, 'r1', 'c']] })));
      expect(v1.next).toBe(4);
      expect(v1.open.map((e) => [e.key, e.barrier, e.lsn, e.origin, e.nonce])).toEqual([
        [blockKey('p_1'), false, 1, 'r1', 'a'],
        [blockKey(barrierMarker('db.t')), true, 2, 'r2', 'b'],
        ['', false, 3, 'r1', 'c'],
      ]);
      expect(decodeHead(Buffer.alloc(0))).toEqual({ next: 1, slots: 0, sealed: [], open: [] });
      expect(() => decodeHead(Buffer.from('{"v":9,"next":1,"w":[]}'))).toThrow(/unrecognised/);
      const bytes = encodeHead(state);
      for (const cut of [3, 10, bytes.length - 1]) expect(() => decodeHead(bytes.subarray(0, cut))).toThrow(/cut short or corrupt/);
      expect(() => decodeHead(Buffer.from([0x43, 9]))).toThrow(/version 9/);
    });
  });
});
