import { randomUUID } from 'node:crypto';
import { mkdir, rm, stat } from 'node:fs/promises';
import { chownSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ChorusError } from '../core/errors.js';
import type { FileInfo } from '../log/entry.js';
import { assertSafeFileName, assertSafeName, fsyncPath, linkPart, manifestOf } from './files.js';

/**
 * Immutable copies of parts, one directory per LSN, made of hardlinks into ClickHouse's
 * data directory: they cost no space until ClickHouse merges the original away, and let a
 * peer fetch the part after that. New copies are built under tmp/ and renamed in whole.
 */
export class PartStore {
  readonly partsDir: string;
  readonly tmpDir: string;
  /** Copies waiting for their LSN, by allocation nonce; kept across restarts for recovery. */
  readonly pendingDir: string;

  constructor(dataDir: string) {
    this.partsDir = join(dataDir, 'parts');
    this.tmpDir = join(dataDir, 'tmp');
    this.pendingDir = join(dataDir, 'pending');
  }

  async init(): Promise<void> {
    await mkdir(this.partsDir, { recursive: true });
    await mkdir(this.pendingDir, { recursive: true });
    // Whatever is left in tmp/ is from an interrupted copy or fetch; it was never renamed in.
    await rm(this.tmpDir, { recursive: true, force: true });
    await mkdir(this.tmpDir, { recursive: true });
  }

  pathOf(lsn: number): string {
    return join(this.partsDir, String(lsn));
  }

  async has(lsn: number): Promise<boolean> {
    try {
      return (await stat(this.pathOf(lsn))).isDirectory();
    } catch {
      return false;
    }
  }

  /**
   * The files of `lsn`'s copy concatenated in manifest order, as one transfer sends them. Read
   * synchronously and whole: for small parts only, whose files the page cache holds.
   */
  readWhole(lsn: number, files: FileInfo[]): Buffer {
    const dir = this.pathOf(lsn);
    return Buffer.concat(
      files.map((f) => {
        assertSafeFileName(f.name);
        return readFileSync(join(dir, f.name));
      }),
    );
  }

  newTempDir(): string {
    return join(this.tmpDir, randomUUID());
  }

  pendingPath(nonce: string, index: number): string {
    return join(this.pendingDir, nonce, String(index));
  }

  /** Hardlinks a part directory into `target` (a temp or pending dir) and describes it. */
  async linkFrom(partDir: string, target: string = this.newTempDir()): Promise<{ tempDir: string; files: FileInfo[] }> {
    const tempDir = target;
    try {
      linkPart(partDir, tempDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EXDEV') {
        throw new ChorusError('FILESYSTEM_MISMATCH', `the part ${partDir} is on another filesystem than the part store ${this.partsDir}; hardlinks need one volume`, err);
      }
      throw err;
    }
    return { tempDir, files: await manifestOf(tempDir) };
  }

  /** Moves a complete temp dir in as the copy of `lsn`; durable once this returns. */
  async commit(tempDir: string, lsn: number): Promise<void> {
    const target = this.pathOf(lsn);
    if (await this.has(lsn)) {
      await rm(tempDir, { recursive: true, force: true });
      return;
    }
    renameSync(tempDir, target);
    await fsyncPath(this.partsDir);
  }

  async discard(tempDir: string): Promise<void> {
    await rm(tempDir, { recursive: true, force: true });
  }

  async discardPending(nonce: string): Promise<void> {
    await rm(join(this.pendingDir, nonce), { recursive: true, force: true });
  }

  /**
   * Hardlinks a part copy (the store's, or a clone's download) into `detachedDir/name`, owned like the table's directory
   * so that ClickHouse (another user in production) can rename and later delete it.
   */
  async linkInto(source: string, detachedDir: string, name: string, owner: { uid: number; gid: number }): Promise<string> {
    // The name may come from a peer's entry, and the directory of that name is emptied first.
    assertSafeName('part', name);
    // Not recursive: a table dropped meanwhile has no directory left, and must not get one back.
    try {
      mkdirSync(detachedDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const target = join(detachedDir, name);
    rmSync(target, { recursive: true, force: true });
    linkPart(source, target);
    chownTree(target, owner);
    return target;
  }

  async remove(lsn: number): Promise<void> {
    await rm(this.pathOf(lsn), { recursive: true, force: true });
  }
}

export function chownTree(dir: string, owner: { uid: number; gid: number }): void {
  // Only root can give files away; and when the owner is already us there is nothing to do.
  if (process.getuid?.() !== 0 || (owner.uid === 0 && owner.gid === (process.getgid?.() ?? 0))) return;
  chownSync(dir, owner.uid, owner.gid);
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) chownTree(path, owner);
    else chownSync(path, owner.uid, owner.gid);
  }
}

/** Hardlinks need one filesystem: refuse to start when the part store and ClickHouse's data differ. */
export function assertSameFilesystem(a: string, b: string): void {
  const da = statSync(a).dev;
  const db = statSync(b).dev;
  if (da !== db) {
    throw new ChorusError(
      'FILESYSTEM_MISMATCH',
      `the part store ${a} and ClickHouse's data directory ${b} are on different filesystems; hardlinks need them on one volume`,
    );
  }
}
