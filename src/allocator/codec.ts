/**
 * The allocator's znodes in binary: the head (`<path>`: next LSN, the sealed chunks' slots and
 * versions, the open chunk) and one znode per sealed chunk (`<path>/w<slot>`). About 18 bytes an
 * entry, against 60 to 75 in the JSON of format 1, which is still read (and rewritten in this
 * format by the next allocation).
 */
import { ChorusError } from '../core/errors.js';
import { blockKey, isMarker, nowSeconds, type AllocatorState, type SealedChunk, type WindowEntry } from './window.js';

const HEAD_MAGIC = 0x43; // 'C'
const CHUNK_MAGIC = 0x57; // 'W'
const FORMAT = 2;

const KIND_NONE = 0;
const KIND_BLOCK = 1;
const KIND_BARRIER = 2;
const SAME_NONCE = 1 << 2;
const RAW_NONCE = 1 << 3;
const ORIGIN_ESCAPE = 15;

export const slotPath = (head: string, slot: number) => `${head}/w${slot}`;

class Writer {
  private bytes: number[] = [];
  byte(b: number): void {
    this.bytes.push(b & 0xff);
  }
  /** LEB128 of a non-negative safe integer. */
  uint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new ChorusError('INTERNAL', `cannot encode ${n} in the allocator's znode`);
    while (n >= 0x80) {
      this.byte((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    this.byte(n);
  }
  int(n: number): void {
    this.uint(n >= 0 ? n * 2 : -n * 2 - 1);
  }
  raw(buf: Buffer): void {
    for (const b of buf) this.byte(b);
  }
  string(s: string): void {
    const buf = Buffer.from(s, 'utf8');
    this.uint(buf.length);
    this.raw(buf);
  }
  done(): Buffer {
    return Buffer.from(this.bytes);
  }
}

class Reader {
  private at = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  private fail(): never {
    throw new ChorusError('INTERNAL', `the allocator's ${this.what} znode is cut short or corrupt`);
  }
  byte(): number {
    if (this.at >= this.buf.length) this.fail();
    return this.buf[this.at++]!;
  }
  uint(): number {
    let n = 0;
    let scale = 1;
    for (;;) {
      const b = this.byte();
      n += (b & 0x7f) * scale;
      if (b < 0x80) break;
      scale *= 0x80;
      if (scale > 2 ** 56) this.fail();
    }
    return n;
  }
  int(): number {
    const z = this.uint();
    return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
  }
  raw(length: number): Buffer {
    if (this.at + length > this.buf.length) this.fail();
    const out = this.buf.subarray(this.at, this.at + length);
    this.at += length;
    return out;
  }
  string(): string {
    return this.raw(this.uint()).toString('utf8');
  }
  end(): void {
    if (this.at !== this.buf.length) this.fail();
  }
}

/** A nonce of newNonce()'s shape (6 random bytes in base64url) is stored as its 6 bytes. */
function rawNonce(nonce: string): Buffer | undefined {
  if (nonce.length !== 8) return undefined;
  const bytes = Buffer.from(nonce, 'base64url');
  return bytes.length === 6 && bytes.toString('base64url') === nonce ? bytes : undefined;
}

function writeEntries(w: Writer, entries: WindowEntry[]): void {
  const origins = [...new Set(entries.map((e) => e.origin))];
  w.uint(origins.length);
  for (const o of origins) w.string(o);
  w.uint(entries.length);
  if (entries.length === 0) return;
  w.uint(entries[0]!.lsn);
  w.uint(entries[0]!.at);
  let lsn = entries[0]!.lsn;
  let at = entries[0]!.at;
  let nonce: string | undefined;
  for (const e of entries) {
    const origin = origins.indexOf(e.origin);
    const raw = e.nonce === nonce ? undefined : rawNonce(e.nonce);
    let flags = e.key === '' ? KIND_NONE : e.barrier ? KIND_BARRIER : KIND_BLOCK;
    if (e.nonce === nonce) flags |= SAME_NONCE;
    else if (raw) flags |= RAW_NONCE;
    flags |= Math.min(origin, ORIGIN_ESCAPE) << 4;
    w.byte(flags);
    if (origin >= ORIGIN_ESCAPE) w.uint(origin);
    // LSNs only grow along a chunk; times may step back between members' clocks.
    w.uint(e.lsn - lsn);
    w.int(e.at - at);
    if (!(flags & SAME_NONCE)) {
      if (raw) w.raw(raw);
      else w.string(e.nonce);
    }
    if (e.key !== '') w.raw(Buffer.from(e.key, 'hex'));
    lsn = e.lsn;
    at = e.at;
    nonce = e.nonce;
  }
}

function readEntries(r: Reader): WindowEntry[] {
  const origins = Array.from({ length: r.uint() }, () => r.string());
  const count = r.uint();
  if (count === 0) return [];
  let lsn = r.uint();
  let at = r.uint();
  let nonce = '';
  const entries: WindowEntry[] = [];
  for (let i = 0; i < count; i++) {
    const flags = r.byte();
    let originIndex = flags >> 4;
    if (originIndex === ORIGIN_ESCAPE) originIndex = r.uint();
    const origin = origins[originIndex];
    if (origin === undefined) throw new ChorusError('INTERNAL', "the allocator's znode names an origin it does not list");
    lsn += r.uint();
    at += r.int();
    if (!(flags & SAME_NONCE)) nonce = flags & RAW_NONCE ? r.raw(6).toString('base64url') : r.string();
    const kind = flags & 3;
    const key = kind === KIND_NONE ? '' : r.raw(8).toString('hex');
    entries.push({ key, barrier: kind === KIND_BARRIER, lsn, origin: origin!, nonce, at });
  }
  return entries;
}

export function encodeHead(state: AllocatorState): Buffer {
  const w = new Writer();
  w.byte(HEAD_MAGIC);
  w.byte(FORMAT);
  w.uint(state.next);
  w.uint(state.slots);
  w.uint(state.sealed.length);
  for (const c of state.sealed) {
    w.uint(c.slot);
    w.uint(c.sealId);
    w.uint(c.entries.length);
  }
  writeEntries(w, state.open);
  return w.done();
}

/** A sealed chunk as the head describes it; its entries are in its own znode. */
export interface ChunkRef {
  slot: number;
  sealId: number;
  count: number;
}

export function decodeHead(data: Buffer | undefined | null): { next: number; slots: number; sealed: ChunkRef[]; open: WindowEntry[] } {
  if (!data || data.length === 0) return { next: 1, slots: 0, sealed: [], open: [] };
  if (data[0] === 0x7b) return decodeFormat1(data);
  const r = new Reader(data, 'head');
  if (r.byte() !== HEAD_MAGIC) throw new ChorusError('INTERNAL', "unrecognised allocator state (not Chorus's znode)");
  const format = r.byte();
  if (format !== FORMAT) throw new ChorusError('INTERNAL', `unrecognised allocator state (version ${format}); is a newer Chorus writing to this shard?`);
  const next = r.uint();
  const slots = r.uint();
  const sealed = Array.from({ length: r.uint() }, () => ({ slot: r.uint(), sealId: r.uint(), count: r.uint() }));
  const open = readEntries(r);
  r.end();
  return { next, slots, sealed, open };
}

export function encodeChunk(chunk: SealedChunk): Buffer {
  const w = new Writer();
  w.byte(CHUNK_MAGIC);
  w.byte(FORMAT);
  w.uint(chunk.sealId);
  writeEntries(w, chunk.entries);
  return w.done();
}

/** Undefined when the slot holds another version than `ref` (it was rewritten after the head was read). */
export function decodeChunk(data: Buffer | undefined | null, ref: ChunkRef): SealedChunk | undefined {
  if (!data || data.length < 3) return undefined;
  const r = new Reader(data, `w${ref.slot}`);
  if (r.byte() !== CHUNK_MAGIC || r.byte() !== FORMAT) throw new ChorusError('INTERNAL', `unrecognised allocator chunk w${ref.slot}`);
  const sealId = r.uint();
  if (sealId !== ref.sealId) return undefined;
  const entries = readEntries(r);
  r.end();
  return entries.length === ref.count ? { slot: ref.slot, sealId, entries } : undefined;
}

/** Format 1: the whole window as JSON, entries `[blockId, lsn, origin, nonce]`. */
function decodeFormat1(data: Buffer): { next: number; slots: number; sealed: ChunkRef[]; open: WindowEntry[] } {
  const parsed = JSON.parse(data.toString('utf8')) as { v: number; next: number; w: Array<[string, number, string, string]> };
  if (parsed.v !== 1 || !Number.isSafeInteger(parsed.next) || !Array.isArray(parsed.w)) {
    throw new ChorusError('INTERNAL', `unrecognised allocator state (version ${String(parsed.v)})`);
  }
  const at = nowSeconds();
  const open = parsed.w.map(([blockId, lsn, origin, nonce]): WindowEntry => ({
    key: blockKey(blockId),
    barrier: isMarker(blockId),
    lsn,
    origin,
    nonce,
    at,
  }));
  return { next: parsed.next, slots: 0, sealed: [], open };
}
