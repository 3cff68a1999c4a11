import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ChorusError } from '../core/errors.js';
import type { LogEntry } from '../log/entry.js';
import { fsyncPath } from './files.js';
import type { PartStore } from './store.js';

export function partFileUrl(base: string, entry: Pick<LogEntry, 'lsn' | 'partName'>, file: string): string {
  return `${base.replace(/\/$/, '')}/v1/parts/${entry.lsn}/${encodeURIComponent(entry.partName)}/${encodeURIComponent(file)}`;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

/**
 * Downloads every file of `entry`'s part from a peer into a temp dir, checking each against
 * the entry's manifest (size and SHA-256, as computed by the origin), fsyncs, and renames the
 * directory into the store. A mismatch throws PART_VERIFICATION_FAILED and leaves nothing.
 */
export async function fetchPart(store: PartStore, entry: LogEntry, peerBase: string, timeoutMs: number): Promise<number> {
  const tempDir = store.newTempDir();
  await mkdir(tempDir, { recursive: true });
  let bytes = 0;
  try {
    for (const file of entry.files) {
      const res = await get(partFileUrl(peerBase, entry, file.name), timeoutMs);
      if (res.statusCode !== 200) {
        res.resume();
        throw new ChorusError(res.statusCode === 404 ? 'PART_NOT_FOUND' : 'PEER_UNAVAILABLE', `peer ${peerBase} answered ${res.statusCode} for LSN ${entry.lsn} file ${file.name}`);
      }
      const hash = createHash('sha256');
      let size = 0;
      const path = join(tempDir, file.name);
      await pipeline(
        res,
        new Transform({
          transform(chunk: Buffer, _enc, cb) {
            size += chunk.length;
            hash.update(chunk);
            cb(null, chunk);
          },
        }),
        createWriteStream(path),
      );
      const sha = hash.digest('hex');
      if (size !== file.size || sha !== file.sha256) {
        throw new ChorusError(
          'PART_VERIFICATION_FAILED',
          `LSN ${entry.lsn} file ${file.name} from ${peerBase}: got ${size} bytes sha256 ${sha.slice(0, 12)}, manifest says ${file.size} bytes sha256 ${file.sha256.slice(0, 12)}`,
        );
      }
      await fsyncPath(path);
      bytes += size;
    }
    await fsyncPath(tempDir);
    await store.commit(tempDir, entry.lsn);
    return bytes;
  } catch (err) {
    await store.discard(tempDir);
    throw err;
  }
}

function get(url: string, timeoutMs: number): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, timeout: timeoutMs }, resolve);
    req.on('timeout', () => req.destroy(new ChorusError('PEER_UNAVAILABLE', `fetch ${url} timed out`)));
    req.on('error', (err) => reject(err instanceof ChorusError ? err : new ChorusError('PEER_UNAVAILABLE', `fetch ${url}: ${err.message}`, err)));
  });
}
