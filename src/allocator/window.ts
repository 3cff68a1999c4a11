/**
 * The state the shard's allocator keeps in ZooKeeper, and the pure rules that turn a batch of
 * allocation requests into a new state. Kept free of I/O so it can be tested alone; the znode
 * layout is in codec.ts.
 *
 * The dedup window is a list of chunks: sealed chunks of `chunkEntries` entries, each in a znode
 * of its own that is written once, and the open chunk, kept in the head znode with the next LSN.
 * An allocation rewrites only the head, so the bytes one allocation sends ZooKeeper are bounded by
 * the chunk size, not by the window's. The window is bounded by count and by age, the way
 * ReplicatedMergeTree bounds its own (`replicated_deduplication_window` and
 * `replicated_deduplication_window_seconds`), a whole sealed chunk at a time.
 */
import { createHash } from 'node:crypto';

export interface WindowEntry {
  /** 16 hex digits of the SHA-256 of the block ID; '' for an entry that is never deduplicated. */
  key: string;
  /** Whether the entry is a DROP PARTITION or TRUNCATE (its key is then that of barrierMarker(table)). */
  barrier: boolean;
  lsn: number;
  /** The replica that allocated it. */
  origin: string;
  /** The request it was allocated to. */
  nonce: string;
  /** When it was allocated, in seconds since the epoch (by the allocating member's clock). */
  at: number;
}

export interface SealedChunk {
  /** The znode (`<head>/w<slot>`) that holds it. */
  slot: number;
  /** The first LSN it held when sealed: with `entries.length` it names one version of its content. */
  sealId: number;
  entries: WindowEntry[];
}

export interface AllocatorState {
  /** The next LSN to hand out. LSNs start at 1. */
  next: number;
  /** Slot znodes created so far (`w0` .. `w<slots - 1>`). */
  slots: number;
  /** Oldest first. */
  sealed: SealedChunk[];
  /** The newest entries, kept in the head znode. */
  open: WindowEntry[];
}

export interface WindowLimits {
  /** At least this many of the newest entries are kept (fewer only by age). */
  entries: number;
  /** Entries older than this are dropped at the next write, a sealed chunk once its newest is. 0: no age bound. */
  seconds: number;
  /** Entries per sealed chunk: what one allocation rewrites at most. */
  chunkEntries: number;
}

export interface AllocationRequest {
  /** Unique per request; lets a request whose outcome was lost recognise its own allocations. */
  nonce: string;
  origin: string;
  /**
   * One per log entry to allocate: a block ID (deduplicated), null for an entry that is never
   * deduplicated, or a barrier marker (barrierMarker(table)) for a DROP PARTITION or TRUNCATE.
   */
  blockIds: Array<string | null>;
  /** The table of each entry ("db.t"), for barriers; may be omitted when there are none. */
  tables?: string[];
  /**
   * LSNs to reserve right after this request's last entry: a lease its origin may use while
   * ZooKeeper is away (the entry is the lease's own log entry). Reserved only once, with the entry.
   */
  reserve?: number;
}

export interface Allocation {
  lsn: number;
  /** True when the block was already in the window: `lsn` is then the LSN it was first given. */
  duplicate: boolean;
  /**
   * The newest DROP PARTITION or TRUNCATE of the same table below `lsn` still in the window
   * (0 if none): this entry must not be attached anywhere before that one is applied.
   */
  barrier: number;
}

/** The most LSNs one lease may reserve (zookeeper.leaseSize). */
export const MAX_LEASE_SIZE = 10_000;

const BARRIER = '!barrier:';
export const barrierMarker = (table: string) => `${BARRIER}${table}`;
export const isMarker = (blockId: string) => blockId.startsWith(BARRIER);

/**
 * What the window keeps of a block ID: 64 bits of its SHA-256. A false match needs about 2^64 / W
 * inserts, and is caught anyway: a duplicate is acknowledged only once the entry it duplicates is
 * known locally, and that entry's full block ID must be the same (InsertPipeline).
 */
export function blockKey(blockId: string | null): string {
  if (!blockId) return '';
  return createHash('sha256').update(blockId).digest('hex').slice(0, 16);
}

export const EMPTY_STATE: AllocatorState = Object.freeze({ next: 1, slots: 0, sealed: [], open: [] }) as AllocatorState;

/** Every entry of the window, oldest first. */
export function windowEntries(state: AllocatorState): WindowEntry[] {
  return state.sealed.length === 0 ? state.open : [...state.sealed.flatMap((c) => c.entries), ...state.open];
}

export const nowSeconds = () => Math.floor(Date.now() / 1000);

/**
 * Assigns LSNs to every block of every request in one step. A block ID already in the
 * window is a duplicate, unless the window entry carries this same request's nonce: then
 * an earlier attempt of this very request landed (its reply was lost), and the LSN is
 * this request's own allocation, not a duplicate.
 */
export function applyBatch(
  state: AllocatorState,
  requests: AllocationRequest[],
  limits: WindowLimits,
  now = nowSeconds(),
): { state: AllocatorState; results: Allocation[][]; changed: boolean } {
  const window = windowEntries(state);
  const byKey = new Map<string, WindowEntry>();
  const ownByNonce = new Map<string, WindowEntry[]>();
  const barriers = new Map<string, number>();
  const noteBarrier = (entry: WindowEntry) => {
    if (entry.barrier) barriers.set(entry.key, Math.max(barriers.get(entry.key) ?? 0, entry.lsn));
  };
  for (const entry of window) {
    noteBarrier(entry);
    if (entry.key !== '' && !entry.barrier && !byKey.has(entry.key)) byKey.set(entry.key, entry);
    const list = ownByNonce.get(entry.nonce);
    if (list) list.push(entry);
    else ownByNonce.set(entry.nonce, [entry]);
  }
  let next = state.next;
  const added: WindowEntry[] = [];
  const results = requests.map((request) => {
    // Entries of an earlier attempt of this request, in the order they were allocated.
    const own = [...(ownByNonce.get(request.nonce) ?? [])];
    const addedBefore = added.length;
    const allocations = request.blockIds.map((blockId, i): Allocation => {
      const table = request.tables?.[i];
      const marker = table ? blockKey(barrierMarker(table)) : '';
      const key = blockKey(blockId);
      const ownIndex = own.findIndex((e) => e.key === key);
      if (ownIndex >= 0) {
        const [entry] = own.splice(ownIndex, 1);
        // Barriers strictly below its LSN in the window as it stands (this batch included, in order).
        return { lsn: entry!.lsn, duplicate: false, barrier: table ? barrierIn([...window, ...added], table, entry!.lsn) : 0 };
      }
      const barrier = blockId !== null && isMarker(blockId);
      if (key && !barrier) {
        const seen = byKey.get(key);
        if (seen) return { lsn: seen.lsn, duplicate: true, barrier: 0 };
      }
      const entry: WindowEntry = { key, barrier, lsn: next++, origin: request.origin, nonce: request.nonce, at: now };
      const below = marker ? (barriers.get(marker) ?? 0) : 0;
      added.push(entry);
      noteBarrier(entry);
      if (key && !barrier) byKey.set(key, entry);
      return { lsn: entry.lsn, duplicate: false, barrier: below };
    });
    if (request.reserve && added.length > addedBefore) next += request.reserve;
    return allocations;
  });
  if (added.length === 0 && next === state.next) return { state, results, changed: false };
  return { state: bound({ ...state, next, open: [...state.open, ...added] }, limits, now), results, changed: true };
}

/**
 * Seals full chunks of the open list into free slots, then drops the oldest sealed chunks while
 * the rest still hold `entries` entries, and sealed chunks (and open entries) past the age bound.
 */
function bound(state: AllocatorState, limits: WindowLimits, now: number): AllocatorState {
  const chunkEntries = Math.max(1, Math.min(limits.chunkEntries, limits.entries));
  const cutoff = limits.seconds > 0 ? now - limits.seconds : -Infinity;
  let sealed = state.sealed.filter((c) => c.entries.length > 0 && Math.max(...c.entries.map((e) => e.at)) >= cutoff);
  let open = state.open.filter((e) => e.at >= cutoff);
  let total = sealed.reduce((sum, c) => sum + c.entries.length, 0) + open.length;
  let slots = state.slots;
  const newChunks: Array<Omit<SealedChunk, 'slot'>> = [];
  while (open.length >= chunkEntries) {
    newChunks.push({ sealId: open[0]!.lsn, entries: open.slice(0, chunkEntries) });
    open = open.slice(chunkEntries);
  }
  // Chunks (old or just sealed) that the newer ones make unnecessary are not written at all.
  const chunks: Array<Omit<SealedChunk, 'slot'> & { slot?: number }> = [...sealed, ...newChunks];
  while (chunks.length > 0 && total - chunks[0]!.entries.length >= limits.entries) total -= chunks.shift()!.entries.length;
  const used = new Set(chunks.flatMap((c) => (c.slot === undefined ? [] : [c.slot])));
  sealed = chunks.map((c) => {
    if (c.slot !== undefined) return c as SealedChunk;
    let slot = 0;
    while (used.has(slot)) slot++;
    used.add(slot);
    slots = Math.max(slots, slot + 1);
    return { ...c, slot };
  });
  return { next: state.next, slots, sealed, open };
}

/**
 * Takes voided LSNs out of the window, so that their block IDs are no longer answered as
 * duplicates: a retry of the same insert then gets a new LSN. A sealed chunk that loses an entry
 * is rewritten (same slot, same seal ID, fewer entries).
 */
export function removeLsns(state: AllocatorState, lsns: number[]): { state: AllocatorState; changed: boolean } {
  const drop = new Set(lsns);
  let changed = false;
  const keep = (entries: WindowEntry[]) => {
    const kept = entries.filter((e) => !drop.has(e.lsn));
    if (kept.length !== entries.length) changed = true;
    return kept;
  };
  const sealed = state.sealed.map((c) => ({ ...c, entries: keep(c.entries) })).filter((c) => c.entries.length > 0);
  const open = keep(state.open);
  return changed ? { state: { ...state, sealed, open }, changed } : { state, changed };
}

/** The newest barrier of `table` below `lsn` in a window: what recovery gives an entry whose allocation reply was lost. */
export function barrierIn(window: WindowEntry[], table: string, lsn: number): number {
  const marker = blockKey(barrierMarker(table));
  let best = 0;
  for (const e of window) if (e.barrier && e.key === marker && e.lsn < lsn && e.lsn > best) best = e.lsn;
  return best;
}

/** The sealed chunks of `next` that are not in `prev` as they are (new, or rewritten by a release): they must be written. */
export function chunksToWrite(prev: AllocatorState, next: AllocatorState): SealedChunk[] {
  const written = new Set(prev.sealed.map((c) => chunkVersion(c)));
  return next.sealed.filter((c) => !written.has(chunkVersion(c)));
}

/** Names one version of a chunk's content (its slot, seal ID and count): a chunk only ever loses entries once sealed. */
export const chunkKey = (slot: number, sealId: number, count: number) => `${slot}:${sealId}:${count}`;
export const chunkVersion = (c: SealedChunk) => chunkKey(c.slot, c.sealId, c.entries.length);
