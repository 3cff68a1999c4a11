import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fsync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import { dirname, join } from 'node:path';
import { ChorusError } from '../core/errors.js';
import type { FileInfo } from '../log/entry.js';

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.%-]*$/;

/** Names that may travel in a URL and become a path: no `/`, no `..`, nothing hidden. */
export function assertSafeName(kind: string, name: string): void {
  if (!SAFE_NAME.test(name) || name.includes('..') || name.length > 255) {
    throw new ChorusError('BAD_PART_NAME', `invalid ${kind} name ${JSON.stringify(name)}`);
  }
}

/**
 * Files below this size are read whole and synchronously: parts are mostly small files, and
 * for them the promise and thread-pool round trips cost more CPU than the read itself.
 */
export const SMALL_FILE_BYTES = 1024 * 1024;

export async function sha256File(path: string, size?: number): Promise<string> {
  const bytes = size ?? statSync(path).size;
  if (bytes < SMALL_FILE_BYTES) return createHash('sha256').update(readFileSync(path)).digest('hex');
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// A projection's part is a subdirectory `<projection>.proj/` of its parent part (21.6+).
const PROJECTION_DIR = /\.proj$/;

/**
 * A file of a part as a manifest names it: `name`, or `<projection>.proj/name` for a file of a
 * projection's part. One level only, every segment a safe name: nothing a path can escape by.
 */
export function assertSafeFileName(name: string): void {
  const segments = name.split('/');
  if (segments.length > 2 || (segments.length === 2 && !PROJECTION_DIR.test(segments[0]!))) {
    throw new ChorusError('BAD_PART_NAME', `invalid file name ${JSON.stringify(name)}`);
  }
  for (const segment of segments) assertSafeName('file', segment);
}

/** The files of a part directory as relative names, sorted: its own, then its projections'. */
export function partFiles(dir: string): string[] {
  const names: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const st = statSync(join(dir, name));
    if (st.isFile()) names.push(name);
    else if (st.isDirectory() && PROJECTION_DIR.test(name)) {
      for (const inner of readdirSync(join(dir, name)).sort()) {
        if (!statSync(join(dir, name, inner)).isFile()) throw new ChorusError('INTERNAL', `projection directory ${join(dir, name)} holds ${inner}, which is not a file`);
        names.push(`${name}/${inner}`);
      }
    } else throw new ChorusError('INTERNAL', `part directory ${dir} holds ${name}, which is neither a file nor a projection`);
  }
  for (const name of names) assertSafeFileName(name);
  return names;
}

/** Hardlinks every file of part directory `source` into `target` (created), projections included. */
export function linkPart(source: string, target: string): void {
  mkdirSync(target, { recursive: true });
  for (const name of partFiles(source)) {
    if (name.includes('/')) mkdirSync(join(target, dirname(name)), { recursive: true });
    linkSync(join(source, name), join(target, name));
  }
}

/** Name, size and SHA-256 of every file of a part directory, projections' files included. */
export async function manifestOf(dir: string): Promise<FileInfo[]> {
  return Promise.all(
    partFiles(dir).map(async (name): Promise<FileInfo> => {
      const path = join(dir, name);
      const size = statSync(path).size;
      return { name, size, sha256: await sha256File(path, size) };
    }),
  );
}

const fsyncFd = promisify(fsync);

/** fsync in the thread pool (it may wait on the disk); open and close are cheap enough inline. */
export async function fsyncPath(path: string): Promise<void> {
  const fd = openSync(path, 'r');
  try {
    await fsyncFd(fd);
  } finally {
    closeSync(fd);
  }
}

export { fsyncFd };
