import { describe, expect, it } from 'vitest';
import { applyBatch, barrierMarker, decodeState, encodeState, EMPTY_STATE, removeLsns } from '../../src/allocator/window.js';

const req = (nonce: string, ...blockIds: Array<string | null>) => ({ nonce, origin: 'r1', blockIds });

describe('allocator window', () => {
  it('assigns consecutive LSNs to a whole batch in one step', () => {
    const { state, results } = applyBatch(EMPTY_STATE, [req('a', 'p_1', 'p_2'), req('b', 'p_3')], 10);
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
    const first = applyBatch(EMPTY_STATE, [req('a', 'p_1'), req('b', 'p_1')], 10);
    expect(first.results[1]).toEqual([{ lsn: 1, duplicate: true, barrier: 0 }]);
    const second = applyBatch(first.state, [req('c', 'p_1')], 10);
    expect(second.results[0]).toEqual([{ lsn: 1, duplicate: true, barrier: 0 }]);
    expect(second.changed).toBe(false);
    expect(second.state.next).toBe(2);
  });

  it('recognises a retried request by its nonce: its own entries, not duplicates, and nothing allocated twice', () => {
    const landed = applyBatch(EMPTY_STATE, [req('n1', 'p_1', null, 'p_2')], 10).state;
    const retry = applyBatch(landed, [req('n1', 'p_1', null, 'p_2')], 10);
    expect(retry.results[0]).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
      { lsn: 3, duplicate: false, barrier: 0 },
    ]);
    expect(retry.changed).toBe(false);
    expect(retry.state.next).toBe(4);
  });

  it('never deduplicates entries without a block ID', () => {
    const { results } = applyBatch(EMPTY_STATE, [req('a', null), req('b', null)], 10);
    expect(results.flat().map((r) => r.lsn)).toEqual([1, 2]);
  });

  it('keeps only the newest window-size block IDs', () => {
    let state = EMPTY_STATE;
    for (let i = 1; i <= 5; i++) state = applyBatch(state, [req(`n${i}`, `p_${i}`)], 3).state;
    expect(state.window.map((e) => e[0])).toEqual(['p_3', 'p_4', 'p_5']);
    expect(applyBatch(state, [req('x', 'p_1')], 3).results[0]).toEqual([{ lsn: 6, duplicate: false, barrier: 0 }]);
  });

  it("gives every entry of a table the newest drop of that table below it as its barrier", () => {
    const r = (nonce: string, blockId: string | null, table: string) => ({ nonce, origin: 'r1', blockIds: [blockId], tables: [table] });
    let state = EMPTY_STATE;
    const step = (request: ReturnType<typeof r>) => {
      const out = applyBatch(state, [request], 100);
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

  it('round-trips through the znode encoding and refuses unknown versions', () => {
    const { state } = applyBatch(EMPTY_STATE, [req('a', 'p_1')], 10);
    expect(decodeState(encodeState(state))).toEqual(state);
    expect(decodeState(Buffer.alloc(0))).toEqual(EMPTY_STATE);
    expect(() => decodeState(Buffer.from('{"v":9,"next":1,"w":[]}'))).toThrow(/unrecognised/);
  });

  it('removeLsns takes voided LSNs out of the window: their blocks get new LSNs, and the next LSN stays', () => {
    const { state } = applyBatch(EMPTY_STATE, [req('a', 'p_1', 'p_2', null)], 10);
    const removed = removeLsns(state, [2, 3, 99]);
    expect(removed.changed).toBe(true);
    expect(removed.state.next).toBe(4);
    expect(removed.state.window).toEqual([['p_1', 1, 'r1', 'a']]);
    // p_1 is still a duplicate; p_2, voided, is allocated again (never below the next LSN).
    expect(applyBatch(removed.state, [req('b', 'p_1', 'p_2')], 10).results[0]).toEqual([
      { lsn: 1, duplicate: true, barrier: 0 },
      { lsn: 4, duplicate: false, barrier: 0 },
    ]);
    const none = removeLsns(removed.state, [2, 42]);
    expect(none.changed).toBe(false);
    expect(none.state).toBe(removed.state);
  });

  it('recognises a request by its nonce only while its entries are in the window; after the window slides, a retry is a new allocation', () => {
    const landed = applyBatch(EMPTY_STATE, [req('n1', 'p_1', null)], 3).state;
    // Within the window: the retry gets its own LSNs back.
    expect(applyBatch(landed, [req('n1', 'p_1', null)], 3).results[0]).toEqual([
      { lsn: 1, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    // Partly slid out: the entry still in the window is recognised, the one slid out is allocated again.
    let state = applyBatch(landed, [req('x', 'q_1'), req('y', 'q_2')], 3).state;
    expect(state.window.map((e) => e[1])).toEqual([2, 3, 4]);
    expect(applyBatch(state, [req('n1', 'p_1', null)], 3).results[0]).toEqual([
      { lsn: 5, duplicate: false, barrier: 0 },
      { lsn: 2, duplicate: false, barrier: 0 },
    ]);
    // Wholly slid out: nothing of n1 is known; the retry is allocated anew and LSNs 1 and 2 are
    // the origin's to record or void (recovery finds no trace of them by nonce once they left).
    state = applyBatch(state, [req('z', 'q_3'), req('w', 'q_4')], 3).state;
    expect(state.window.some((e) => e[3] === 'n1')).toBe(false);
    expect(applyBatch(state, [req('n1', 'p_1', null)], 3).results[0]).toEqual([
      { lsn: 7, duplicate: false, barrier: 0 },
      { lsn: 8, duplicate: false, barrier: 0 },
    ]);
  });
});
