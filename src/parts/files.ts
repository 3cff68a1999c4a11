import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
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

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Name, size and SHA-256 of every file of a part directory (parts are flat in 18.16). */
export async function manifestOf(dir: string): Promise<FileInfo[]> {
  const names = (await readdir(dir)).sort();
  const files: FileInfo[] = [];
  for (const name of names) {
    const path = join(dir, name);
    const st = await stat(path);
    if (!st.isFile()) throw new ChorusError('INTERNAL', `part directory ${dir} holds ${name}, which is not a file`);
    assertSafeName('file', name);
    files.push({ name, size: st.size, sha256: await sha256File(path) });
  }
  return files;
}

export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
