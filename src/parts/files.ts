import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fsync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { promisify } from 'node:util';
import { join } from 'node:path';
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

/** Name, size and SHA-256 of every file of a part directory (parts are flat in 18.16). */
export async function manifestOf(dir: string): Promise<FileInfo[]> {
  const names = readdirSync(dir).sort();
  return Promise.all(
    names.map(async (name): Promise<FileInfo> => {
      const path = join(dir, name);
      const st = statSync(path);
      if (!st.isFile()) throw new ChorusError('INTERNAL', `part directory ${dir} holds ${name}, which is not a file`);
      assertSafeName('file', name);
      return { name, size: st.size, sha256: await sha256File(path, st.size) };
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
