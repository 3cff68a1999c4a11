/**
 * The state held in the shard's one znode, and the pure rule that turns a batch of
 * allocation requests into a new state. Kept free of I/O so it can be tested alone.
 */

/** [blockId ('' for entries without one), lsn, origin replica, request nonce] */
export type WindowEntry = [string, number, string, string];

export interface AllocatorState {
  /** The next LSN to hand out. LSNs start at 1. */
  next: number;
  /** Recent allocations, oldest first, at most `windowSize` long. */
  window: WindowEntry[];
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

const BARRIER = '!barrier:';
export const barrierMarker = (table: string) => `${BARRIER}${table}`;
const isMarker = (blockId: string) => blockId.startsWith(BARRIER);

export const EMPTY_STATE: AllocatorState = { next: 1, window: [] };

export function encodeState(state: AllocatorState): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, next: state.next, w: state.window }));
}

export function decodeState(data: Buffer | undefined | null): AllocatorState {
  if (!data || data.length === 0) return { ...EMPTY_STATE, window: [] };
  const parsed = JSON.parse(data.toString('utf8')) as { v: number; next: number; w: WindowEntry[] };
  if (parsed.v !== 1 || !Number.isSafeInteger(parsed.next) || !Array.isArray(parsed.w)) {
    throw new Error(`unrecognised allocator state (version ${String(parsed.v)})`);
  }
  return { next: parsed.next, window: parsed.w };
}

/**
 * Assigns LSNs to every block of every request in one step. A block ID already in the
 * window is a duplicate, unless the window entry carries this same request's nonce: then
 * an earlier attempt of this very request landed (its reply was lost), and the LSN is
 * this request's own allocation, not a duplicate.
 */
export function applyBatch(
  state: AllocatorState,
  requests: AllocationRequest[],
  windowSize: number,
): { state: AllocatorState; results: Allocation[][]; changed: boolean } {
  const byBlock = new Map<string, WindowEntry>();
  const ownByNonce = new Map<string, WindowEntry[]>();
  const barriers = new Map<string, number>();
  const noteBarrier = (entry: WindowEntry) => {
    if (isMarker(entry[0])) {
      const table = entry[0].slice(BARRIER.length);
      barriers.set(table, Math.max(barriers.get(table) ?? 0, entry[1]));
    }
  };
  for (const entry of state.window) {
    noteBarrier(entry);
    if (entry[0] !== '' && !isMarker(entry[0]) && !byBlock.has(entry[0])) byBlock.set(entry[0], entry);
    const list = ownByNonce.get(entry[3]);
    if (list) list.push(entry);
    else ownByNonce.set(entry[3], [entry]);
  }
  let next = state.next;
  const added: WindowEntry[] = [];
  const results = requests.map((request) => {
    // Entries of an earlier attempt of this request, in the order they were allocated.
    const own = [...(ownByNonce.get(request.nonce) ?? [])];
    return request.blockIds.map((blockId, i): Allocation => {
      const table = request.tables?.[i];
      // Barriers strictly below `lsn` in the window as it stands (this batch included, in order).
      const barrierBelow = (lsn: number) => (table ? barrierIn([...state.window, ...added], table, lsn) : 0);
      const ownIndex = own.findIndex((e) => e[0] === (blockId ?? ''));
      if (ownIndex >= 0) {
        const [entry] = own.splice(ownIndex, 1);
        return { lsn: entry![1], duplicate: false, barrier: barrierBelow(entry![1]) };
      }
      if (blockId && !isMarker(blockId)) {
        const seen = byBlock.get(blockId);
        if (seen) return { lsn: seen[1], duplicate: true, barrier: 0 };
      }
      const entry: WindowEntry = [blockId ?? '', next++, request.origin, request.nonce];
      const barrier = table ? (barriers.get(table) ?? 0) : 0;
      added.push(entry);
      noteBarrier(entry);
      if (blockId && !isMarker(blockId)) byBlock.set(blockId, entry);
      return { lsn: entry[1], duplicate: false, barrier };
    });
  });
  if (added.length === 0) return { state, results, changed: false };
  const window = [...state.window, ...added];
  return {
    state: { next, window: window.length > windowSize ? window.slice(window.length - windowSize) : window },
    results,
    changed: true,
  };
}

/**
 * Takes voided LSNs out of the window, so that their block IDs are no longer answered as
 * duplicates: a retry of the same insert then gets a new LSN.
 */
export function removeLsns(state: AllocatorState, lsns: number[]): { state: AllocatorState; changed: boolean } {
  const drop = new Set(lsns);
  const window = state.window.filter((e) => !drop.has(e[1]));
  return window.length === state.window.length ? { state, changed: false } : { state: { next: state.next, window }, changed: true };
}

/** The newest barrier of `table` below `lsn` in a window: what recovery gives an entry whose allocation reply was lost. */
export function barrierIn(window: WindowEntry[], table: string, lsn: number): number {
  let best = 0;
  for (const e of window) if (e[0] === barrierMarker(table) && e[1] < lsn && e[1] > best) best = e[1];
  return best;
}
