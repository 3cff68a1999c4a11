import { createHash } from 'node:crypto';
import { closeSync, open, writeSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import type http from 'node:http';
import { dirname, join } from 'node:path';
import { ChorusError } from '../core/errors.js';
import type { Faults } from '../faults/faults.js';
import type { FileInfo, LogEntry } from '../log/entry.js';
import { assertSafeFileName, fsyncFd, fsyncPath } from './files.js';
import type { PartStore } from './store.js';
import type { InterserverClient } from '../tls/https.js';

/** Receives the wall time of each sub-step of a fetch, in milliseconds. */
export type FetchTiming = (step: 'fetch.connect' | 'fetch.download' | 'fetch.verify' | 'fetch.write' | 'fetch.fsync' | 'fetch.fsync_dir' | 'fetch.rename', ms: number) => void;

const untimed: FetchTiming = () => undefined;
const openFile = promisify(open);

export function partPath(entry: Pick<LogEntry, 'lsn' | 'partName'>): string {
  return `/v1/parts/${entry.lsn}/${encodeURIComponent(entry.partName)}`;
}

/**
 * Downloads `entry`'s part from a peer in one response (its files concatenated in manifest
 * order) into a temp dir, checking each file against the entry's manifest (size and SHA-256,
 * as computed by the origin), fsyncs, and renames the directory into the store. Any mismatch
 * throws PART_VERIFICATION_FAILED and leaves nothing behind.
 */
export async function fetchPart(store: PartStore, entry: LogEntry, peer: InterserverClient, timeoutMs: number, faults?: Faults, timing: FetchTiming = untimed): Promise<number> {
  return intoStore(store, entry.lsn, timing, (tempDir) =>
    downloadPart(peer, partPath(entry), entry.files, tempDir, `LSN ${entry.lsn} from ${peer.peerName}`, timeoutMs, () => faults?.crashPoint('fetch.mid-transfer'), timing),
  );
}

/** Runs `write` into a new temp dir and renames that into the store as `lsn`'s copy; on any failure nothing is left behind. */
async function intoStore(store: PartStore, lsn: number, timing: FetchTiming, write: (tempDir: string) => Promise<number>): Promise<number> {
  const tempDir = store.newTempDir();
  try {
    const bytes = await write(tempDir);
    const renameAt = performance.now();
    await store.commit(tempDir, lsn);
    timing('fetch.rename', performance.now() - renameAt);
    return bytes;
  } catch (err) {
    await store.discard(tempDir);
    throw err;
  }
}

/**
 * GETs a part (its files concatenated in manifest order) into `dir`, each file verified against
 * `files` and fsynced, the directory too. Throws PART_VERIFICATION_FAILED on any mismatch.
 */
export async function downloadPart(
  peer: InterserverClient,
  path: string,
  files: FileInfo[],
  dir: string,
  label: string,
  timeoutMs: number,
  onFirstFile: () => void = () => undefined,
  timing: FetchTiming = untimed,
): Promise<number> {
  await mkdir(dir, { recursive: true });
  const connectAt = performance.now();
  const res: http.IncomingMessage = await peer.request(path, { timeoutMs });
  timing('fetch.connect', performance.now() - connectAt);
  if (res.statusCode !== 200) {
    res.resume();
    throw new ChorusError(res.statusCode === 404 ? 'PART_NOT_FOUND' : 'PEER_UNAVAILABLE', `${label}: answered ${res.statusCode}`);
  }
  return writePart(res, files, dir, label, onFirstFile, timing);
}

/**
 * Stores a part that came inside a gossip push (its files concatenated in manifest order, as a
 * fetch would have brought them): the same checks against the entry's manifest, the same fsyncs
 * and rename. Throws PART_VERIFICATION_FAILED on any mismatch and leaves nothing behind.
 */
export async function storePushedPart(store: PartStore, entry: LogEntry, data: Buffer, from: string, faults?: Faults, timing: FetchTiming = untimed): Promise<number> {
  return intoStore(store, entry.lsn, timing, async (tempDir) => {
    await mkdir(tempDir, { recursive: true });
    return writePart([data], entry.files, tempDir, `LSN ${entry.lsn} pushed by ${from}`, () => faults?.crashPoint('fetch.mid-transfer'), timing);
  });
}

/** Writes and verifies the concatenated files of `body` into `dir` (which exists), then makes the directory durable. */
async function writePart(body: AsyncIterable<Buffer> | Iterable<Buffer>, files: FileInfo[], dir: string, label: string, onFirstFile: () => void, timing: FetchTiming): Promise<number> {
  const bytes = await receiveFiles(body, files, dir, label, onFirstFile, timing);
  const fsyncAt = performance.now();
  // A projection's files sit in a subdirectory: its entries must be durable too.
  for (const sub of new Set(files.filter((f) => f.name.includes('/')).map((f) => dirname(f.name)))) await fsyncPath(join(dir, sub));
  await fsyncPath(dir);
  timing('fetch.fsync_dir', performance.now() - fsyncAt);
  return bytes;
}

/**
 * Splits the concatenated files by the manifest's sizes, hashing and writing each as it comes.
 * Writes are synchronous (parts are mostly small files, for which a thread-pool round trip
 * costs more than the write); each file's fsync runs in the pool while the next arrives.
 * Opening (creating) a file is not: it waits for the filesystem's journal, busy with those
 * fsyncs, and a synchronous open held the whole event loop for it (issue 12's profile).
 */
async function receiveFiles(body: AsyncIterable<Buffer> | Iterable<Buffer>, files: FileInfo[], dir: string, label: string, onFirstFile: () => void, timing: FetchTiming): Promise<number> {
  const downloadAt = performance.now();
  // Hashing and writing happen as the bytes arrive: their time is summed and reported as if
  // each had run in one go (the verify and write sub-steps of the download).
  let hashMs = 0;
  let writeMs = 0;
  let index = -1;
  let remaining = 0;
  let fd: number | null = null;
  let hash = createHash('sha256');
  let total = 0;
  const synced: Array<Promise<void>> = [];
  const refuse = (what: string) => new ChorusError('PART_VERIFICATION_FAILED', `${label}: ${what}; the part is refused`);

  const finishFile = () => {
    if (fd === null) return;
    const file = files[index]!;
    const hashAt = performance.now();
    const sha = hash.digest('hex');
    hashMs += performance.now() - hashAt;
    const done = fd;
    fd = null;
    if (sha !== file.sha256) {
      closeSync(done);
      throw refuse(`file ${file.name} has sha256 ${sha.slice(0, 12)}, the manifest says ${file.sha256.slice(0, 12)}`);
    }
    synced.push(fsyncFd(done).finally(() => closeSync(done)));
    if (synced.length === 1) onFirstFile();
  };
  // Moves to the next file that still expects bytes, finishing the ones before it.
  const advance = async () => {
    while (remaining === 0) {
      finishFile();
      index++;
      if (index >= files.length) return;
      const name = files[index]!.name;
      assertSafeFileName(name);
      if (name.includes('/')) await mkdir(join(dir, dirname(name)), { recursive: true });
      const openAt = performance.now();
      fd = await openFile(join(dir, name), 'w');
      writeMs += performance.now() - openAt;
      hash = createHash('sha256');
      remaining = files[index]!.size;
    }
  };

  try {
    await advance();
    for await (const chunk of body) {
      for (let offset = 0; offset < chunk.length; ) {
        if (index >= files.length) throw refuse('more bytes than the manifest lists');
        const piece = chunk.subarray(offset, offset + Math.min(remaining, chunk.length - offset));
        const hashAt = performance.now();
        hash.update(piece);
        const writeAt = performance.now();
        writeSync(fd!, piece);
        hashMs += writeAt - hashAt;
        writeMs += performance.now() - writeAt;
        remaining -= piece.length;
        offset += piece.length;
        total += piece.length;
        await advance();
      }
    }
    if (index < files.length) throw refuse(`the transfer ended inside file ${files[index]!.name}`);
    const bodyDoneAt = performance.now();
    timing('fetch.download', bodyDoneAt - downloadAt);
    timing('fetch.verify', hashMs);
    timing('fetch.write', writeMs);
    // The files' fsyncs ran in the pool while later files arrived: what is left of them is waited for here.
    await Promise.all(synced);
    timing('fetch.fsync', performance.now() - bodyDoneAt);
    return total;
  } catch (err) {
    if (fd !== null) closeSync(fd);
    await Promise.allSettled(synced);
    throw err;
  }
}
