import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
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

/** Files below this size are read whole: one read beats a stream's several round trips. */
const READ_WHOLE_BELOW = 4 * 1024 * 1024;

export async function sha256File(path: string, size?: number): Promise<string> {
  const bytes = size ?? (await stat(path)).size;
  if (bytes < READ_WHOLE_BELOW) return createHash('sha256').update(await readFile(path)).digest('hex');
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Name, size and SHA-256 of every file of a part directory (parts are flat in 18.16). */
export async function manifestOf(dir: string): Promise<FileInfo[]> {
  const names = (await readdir(dir)).sort();
  return Promise.all(
    names.map(async (name): Promise<FileInfo> => {
      const path = join(dir, name);
      const st = await stat(path);
      if (!st.isFile()) throw new ChorusError('INTERNAL', `part directory ${dir} holds ${name}, which is not a file`);
      assertSafeName('file', name);
      return { name, size: st.size, sha256: await sha256File(path, st.size) };
    }),
  );
}

export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
