import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { FileInfo } from '../log/entry.js';

/*
 * Whether a part directory holds what ClickHouse needs to load it again: a checksums.txt that
 * parses and whose files are all there at the sizes it lists, and a columns.txt that parses.
 *
 * ClickHouse 18.16 flushes the last buffer of a file in its destructor and only logs a failure
 * there, so on a full disk an INSERT can succeed with an empty checksums.txt and columns.txt, and
 * an ATTACH PART (which rewrites columns.txt) can leave an active part with an empty one. Such a
 * part cannot be attached anywhere, and one already active is removed at ClickHouse's next
 * start ("broken part ... impossible to repair"). Sizes are what a short write changes; the
 * hashes in checksums.txt are ClickHouse's own business.
 */

/**
 * Why `dir` is not a loadable part, or undefined when it is. `files`, the part's manifest when
 * one was just taken, gives the sizes on disk without a second stat of each file.
 */
export function incompletePart(dir: string, files?: readonly FileInfo[]): string | undefined {
  const sizes = files && new Map(files.map((f) => [f.name, f.size]));
  const sizeOf = (name: string): number | undefined => {
    if (sizes) return sizes.get(name);
    try {
      return statSync(join(dir, name)).size;
    } catch {
      return undefined;
    }
  };
  return checksumsProblem(dir, '', sizeOf) ?? columnsProblem(dir);
}

/** Why `dir`'s columns.txt would not load, or undefined. */
export function columnsProblem(dir: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(join(dir, 'columns.txt'), 'utf8');
  } catch (err) {
    return `columns.txt cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
  }
  try {
    parseColumns(text);
    return undefined;
  } catch (err) {
    return `columns.txt is incomplete (${text.length} bytes): ${(err as Error).message}`;
  }
}

/** `dir/prefix` is the part, or one of its projections (`p.proj/`), whose files checksums.txt lists. */
function checksumsProblem(dir: string, prefix: string, sizeOf: (name: string) => number | undefined): string | undefined {
  const own = join(dir, prefix);
  let listed: ChecksumsEntry[];
  try {
    listed = parseChecksums(readFileSync(join(own, 'checksums.txt')));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return `${prefix}checksums.txt ${code ? `cannot be read (${code})` : `is incomplete: ${(err as Error).message}`}`;
  }
  for (const file of listed) {
    // A projection is listed as one entry for its directory, which has a checksums.txt of its own.
    if (file.name.endsWith('.proj')) {
      const inner = checksumsProblem(dir, `${prefix}${file.name}/`, sizeOf);
      if (inner) return inner;
      continue;
    }
    // ClickHouse lists a full-text index's files with a size of 0 and skips them when it checks
    // sizes itself (MergeTreeDataPartChecksum::checkSize, isGinFile).
    if (GIN_FILE.test(file.name)) continue;
    const size = sizeOf(`${prefix}${file.name}`);
    if (size === undefined) return `${prefix}${file.name}, listed in checksums.txt, is missing`;
    if (size !== file.size) return `${prefix}${file.name} has ${size} bytes where checksums.txt lists ${file.size}`;
  }
  return undefined;
}

export interface ChecksumsEntry {
  name: string;
  /** Bytes on disk. */
  size: number;
}

const CHECKSUMS_HEADER = 'checksums format version: ';
const GIN_FILE = /\.gin_(dict|post|seg|sid|bflt)$/;
const COLUMNS_HEADER = 'columns format version: 1\n';

/**
 * The files a checksums.txt lists. Format 4, which every release from 1.1 to 26 writes: the
 * header line, then a compressed stream of varuint count and, per file, its name, size, a
 * 128-bit hash, and, for a compressed file, its uncompressed size and hash.
 */
export function parseChecksums(bytes: Buffer): ChecksumsEntry[] {
  const newline = bytes.indexOf(0x0a);
  const header = bytes.subarray(0, newline < 0 ? bytes.length : newline).toString('latin1');
  if (newline < 0 || !header.startsWith(CHECKSUMS_HEADER)) throw new Error(`no "${CHECKSUMS_HEADER.trim()}" line`);
  const version = header.slice(CHECKSUMS_HEADER.length);
  if (version !== '4') throw new Error(`format version ${JSON.stringify(version)}, where 4 is the only one ClickHouse 1.1 to 26 write`);
  const body = new Reader(decompress(bytes.subarray(newline + 1)));
  const count = body.varUInt();
  const entries: ChecksumsEntry[] = [];
  for (let i = 0; i < count; i++) {
    const name = body.bytes(body.varUInt()).toString('utf8');
    const size = body.varUInt();
    body.bytes(16);
    if (body.byte() !== 0) {
      body.varUInt();
      body.bytes(16);
    }
    entries.push({ name, size });
  }
  if (!body.atEnd()) throw new Error('bytes left after the last file');
  return entries;
}

/** The column list of a columns.txt: `columns format version: 1`, `N columns:`, then N lines. */
export function parseColumns(text: string): string[] {
  if (!text.startsWith(COLUMNS_HEADER)) throw new Error(`no "${COLUMNS_HEADER.trim()}" line`);
  const lines = text.slice(COLUMNS_HEADER.length).split('\n');
  const count = /^(\d+) columns:$/.exec(lines[0] ?? '');
  if (!count) throw new Error('no "N columns:" line');
  const columns = lines.slice(1, 1 + Number(count[1]));
  // The file ends with a newline after the last column: a cut after it leaves fewer lines.
  if (columns.length !== Number(count[1]) || lines.length !== Number(count[1]) + 2 || lines.at(-1) !== '') {
    throw new Error(`${count[1]} columns announced, ${Math.max(0, lines.length - 2)} complete lines follow`);
  }
  if (columns.some((c) => !c.startsWith('`') || !c.includes(' '))) throw new Error('a column line is not "`name` Type"');
  return columns;
}

/** Methods of ClickHouse's compressed block header (CompressionMethodByte). */
const METHOD_NONE = 0x02;
const METHOD_LZ4 = 0x82;
/** 16 bytes of CityHash128, then the method byte and two 32-bit sizes. */
const BLOCK_CHECKSUM_BYTES = 16;
const BLOCK_HEADER_BYTES = 9;

/** ClickHouse's compressed stream (CompressedWriteBuffer): blocks until the bytes end. */
function decompress(stream: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  while (at < stream.length) {
    if (stream.length - at < BLOCK_CHECKSUM_BYTES + BLOCK_HEADER_BYTES) throw new Error('a compressed block header is cut short');
    const header = at + BLOCK_CHECKSUM_BYTES;
    const method = stream[header]!;
    const compressedSize = stream.readUInt32LE(header + 1);
    const size = stream.readUInt32LE(header + 5);
    const end = header + compressedSize;
    if (compressedSize < BLOCK_HEADER_BYTES || end > stream.length) throw new Error(`a compressed block of ${compressedSize} bytes is cut short`);
    const payload = stream.subarray(header + BLOCK_HEADER_BYTES, end);
    // LZ4 expands at most 255 times: a larger announced size is a corrupt header, not a buffer to allocate.
    if (size > payload.length * 255 + 16) throw new Error(`a compressed block announces ${size} bytes from ${payload.length}`);
    if (method === METHOD_LZ4) out.push(lz4Block(payload, size));
    else if (method === METHOD_NONE) {
      if (payload.length !== size) throw new Error('an uncompressed block is not its announced size');
      out.push(payload);
    } else throw new Error(`compression method 0x${method.toString(16)} is not LZ4 or none`);
    at = end;
  }
  return Buffer.concat(out);
}

/** Decodes one LZ4 block (the raw block format, as LZ4_decompress_safe reads it). */
export function lz4Block(src: Buffer, size: number): Buffer {
  const out = Buffer.alloc(size);
  let s = 0;
  let d = 0;
  const next = () => {
    if (s >= src.length) throw new Error('an LZ4 block is cut short');
    return src[s++]!;
  };
  const length = (base: number) => {
    let n = base;
    if (base === 15) for (let b = 255; b === 255; ) n += b = next();
    return n;
  };
  while (s < src.length) {
    const token = next();
    const literals = length(token >> 4);
    if (s + literals > src.length || d + literals > size) throw new Error('an LZ4 literal run overruns its block');
    src.copy(out, d, s, s + literals);
    s += literals;
    d += literals;
    // The last sequence is literals only.
    if (s === src.length) break;
    const offset = next() | (next() << 8);
    const match = length(token & 15) + 4;
    if (offset === 0 || offset > d || d + match > size) throw new Error('an LZ4 match points outside its block');
    // Byte by byte: a match may overlap the bytes it produces.
    for (let i = 0; i < match; i++, d++) out[d] = out[d - offset]!;
  }
  if (d !== size) throw new Error(`an LZ4 block gave ${d} bytes of ${size}`);
  return out;
}

/** Reads ClickHouse's binary encoding (varuints, raw bytes), throwing when the bytes run out. */
class Reader {
  private at = 0;
  constructor(private readonly buf: Buffer) {}

  byte(): number {
    if (this.at >= this.buf.length) throw new Error('the file list is cut short');
    return this.buf[this.at++]!;
  }

  bytes(n: number): Buffer {
    if (this.at + n > this.buf.length) throw new Error('the file list is cut short');
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  varUInt(): number {
    let value = 0;
    for (let shift = 0; shift < 63; shift += 7) {
      const b = this.byte();
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(value)) throw new Error('a number in the file list is too large');
        return value;
      }
    }
    throw new Error('a varuint in the file list is too long');
  }

  atEnd(): boolean {
    return this.at === this.buf.length;
  }
}
