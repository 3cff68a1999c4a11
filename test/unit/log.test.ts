import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { messagesOf, partsOf } from '../../src/gossip/gossip.js';
import { voidEntry, type LogEntry } from '../../src/log/entry.js';
import { LocalLog, type LogConflict } from '../../src/log/store.js';
import { ENTRY_LIMITS } from '../../src/log/validate.js';
import { insertEntry as insert, sha } from '../support/entries.js';

/** The local log on a real SQLite file in a temp dir. */
describe('local log: conflicts, decommissions and message sizes', () => {
  let dir: string;
  let log: LocalLog;
  const seen: LogConflict[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'chorus-log-'));
    log = new LocalLog(dir);
    seen.length = 0;
    log.onConflict = (c) => seen.push(c);
  });

  afterEach(() => {
    log.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ignores an identical copy, keeps the stored entry against a different one and records the conflict, across restarts', () => {
    expect(log.addEntries([insert(1)], 'pending', 'r2').added).toHaveLength(1);
    expect(log.addEntries([insert(1, 1, { allocatedAtMs: 99 })], 'pending', 'r2')).toEqual({ added: [], conflicts: [] });
    const { added, conflicts } = log.addEntries([insert(1, 1, { blockId: 'all_forged' })], 'pending', 'r3');
    expect(added).toEqual([]);
    expect(conflicts.map((c) => [c.lsn, c.source, c.received.blockId])).toEqual([[1, 'r3', 'all_forged']]);
    expect(seen).toHaveLength(1);
    expect(log.get(1)!.entry.blockId).toBe('all_1');
    // A void never replaces an entry, and is a conflict when it arrives as one.
    expect(log.voidUnrecorded([1, 2], 'r1').map((e) => e.lsn)).toEqual([2]);
    expect(log.addEntries([voidEntry(1, 'r1')], 'pending', 'r2').conflicts).toHaveLength(1);
    log.close();
    log = new LocalLog(dir);
    expect(log.conflicts().map((c) => [c.lsn, c.source, c.received.kind])).toEqual([
      [1, 'r2', 'void'],
      [1, 'r3', 'insert'],
    ]);
  });

  it("the origin's record of an LSN that holds someone else's entry is a conflict, and the intent is resolved", () => {
    log.addEntries([insert(5, 1, { origin: 'r2', blockId: 'all_theirs' })], 'pending', 'r2');
    log.recordIntent('n1', [{ dir: '', entry: { ...insert(5), lsn: undefined, allocatedAtMs: undefined, barrier: undefined } as never }]);
    const { added, conflicts } = log.resolveIntent('n1', [insert(5)]);
    expect(added).toEqual([]);
    expect(conflicts.map((c) => c.source)).toEqual(['local']);
    expect(log.intents()).toEqual([]);
  });

  it('refuses to record an intent for an entry peers would refuse', () => {
    expect(() => log.recordIntent('n1', [{ dir: '', entry: { ...insert(1), table: 'a/b' } }])).toThrow(expect.objectContaining({ code: 'INVALID_ENTRY' }));
    expect(log.intents()).toEqual([]);
  });

  it('stores a decommission as applied and lists its member', () => {
    const entry: LogEntry = { ...voidEntry(3, 'r1'), kind: 'decommission', member: 'r3' };
    log.addEntries([entry]);
    expect(log.get(3)!.state).toBe('applied');
    expect(log.decommissionedMembers()).toEqual(['r3']);
  });

  it('puts parts into a push in entry order up to its byte budget; the rest are left to be fetched', () => {
    const batch = [insert(1), insert(2), insert(3), insert(4)];
    const parts = new Map([
      [1, Buffer.alloc(400)],
      [2, Buffer.alloc(700)],
      [4, Buffer.alloc(500)],
      [9, Buffer.alloc(10)],
    ]);
    const lsns = (maxBytes: number) => partsOf(batch, parts, maxBytes).map((p) => p.lsn);
    expect(lsns(10_000)).toEqual([1, 2, 4]);
    // 2 does not fit after 1; 4 still does. A part of an entry not in the message never goes.
    expect(lsns(1000)).toEqual([1, 4]);
    expect(lsns(100)).toEqual([]);
    expect(partsOf(batch, parts, 10_000)[1]!.data).toBe(parts.get(2));
  });

  it('caps what one message carries by bytes as well as by count, and a big entry still goes alone', () => {
    const big = ENTRY_LIMITS.filesPerPart;
    const entries = [insert(1), insert(2, big), insert(3), insert(4), insert(5, big), insert(6, big)];
    log.addEntries(entries);
    const bigBytes = JSON.stringify(insert(2, big)).length;
    expect(bigBytes).toBeGreaterThan(256 * 1024);
    const digest = { from: 'r2', maxLsn: 0, knownWatermark: 0, knownAbove: [], appliedWatermark: 0 };
    expect(log.missingFrom(digest, 500, 256 * 1024).map((e) => e.lsn)).toEqual([1]);
    expect(log.missingFrom({ ...digest, knownWatermark: 1 }, 500, 256 * 1024).map((e) => e.lsn)).toEqual([2]);
    expect(log.missingFrom({ ...digest, knownWatermark: 2 }, 500, 256 * 1024).map((e) => e.lsn)).toEqual([3, 4]);
    expect(log.missingFrom({ ...digest, knownWatermark: 2 }, 1, 256 * 1024).map((e) => e.lsn)).toEqual([3]);
    expect(messagesOf(entries, 500, 256 * 1024).map((m) => m.map((e) => e.lsn))).toEqual([[1], [2], [3, 4], [5], [6]]);
    expect(messagesOf(entries, 2, 1e9).map((m) => m.map((e) => e.lsn))).toEqual([[1, 2], [3, 4], [5, 6]]);
    // Under gRPC's 4 MiB limit: an entry larger than one message could carry is refused, at the
    // origin before it is allocated.
    expect(ENTRY_LIMITS.entryBytes).toBeLessThan(4 * 1024 * 1024);
    const files = Array.from({ length: big }, (_, i) => ({ name: i === 0 ? 'checksums.txt' : `${'x'.repeat(250)}${i}`, size: 1, sha256: sha('c') }));
    const largest = insert(1, 1, { files, bytes: files.length });
    expect(JSON.stringify(largest).length).toBeGreaterThan(ENTRY_LIMITS.entryBytes);
    expect(() => log.recordIntent('n1', [{ dir: '', entry: largest }])).toThrow(expect.objectContaining({ code: 'INVALID_ENTRY' }));
  });
});
