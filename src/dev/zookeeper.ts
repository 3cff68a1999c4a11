import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { spawnDetached, waitFor } from './processes.js';

export const ZK_SERVER_SCRIPT = '/usr/share/zookeeper/bin/zkServer.sh';

/** Sends a four-letter word (mntr, ruok, srvr) and returns the answer. */
export function fourLetterWord(port: number, word: string, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host);
    const chunks: Buffer[] = [];
    socket.setTimeout(3000, () => socket.destroy(new Error(`ZooKeeper ${word} timed out`)));
    socket.on('connect', () => socket.write(word));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.on('error', reject);
  });
}

export async function mntr(port: number): Promise<Record<string, string>> {
  const text = await fourLetterWord(port, 'mntr');
  return Object.fromEntries(
    text
      .split('\n')
      .map((line) => line.split('\t'))
      .filter((kv) => kv.length === 2)
      .map(([k, v]) => [k!, v!]),
  );
}

/** Starts ZooKeeper listening on `host:port` (loopback unless told otherwise), data under `dir`. */
export async function startZooKeeper(dir: string, port: number, host = '127.0.0.1'): Promise<number> {
  if (!existsSync(ZK_SERVER_SCRIPT)) {
    throw new Error(`ZooKeeper is not installed (${ZK_SERVER_SCRIPT} missing): run \`bash scripts/setup.sh\` or apt-get install zookeeper`);
  }
  mkdirSync(join(dir, 'data'), { recursive: true });
  const cfg = join(dir, 'zoo.cfg');
  writeFileSync(
    cfg,
    [
      'tickTime=500',
      'initLimit=10',
      'syncLimit=5',
      `dataDir=${join(dir, 'data')}`,
      `clientPort=${port}`,
      `clientPortAddress=${host}`,
      '4lw.commands.whitelist=*',
      'admin.enableServer=false',
      'maxClientCnxns=0',
      // A session may last between 2 and 60 s (2 x tickTime .. 120 x tickTime).
      'minSessionTimeout=1000',
      'maxSessionTimeout=60000',
      '',
    ].join('\n'),
  );
  const logFile = join(dir, 'zookeeper.log');
  const pid = spawnDetached(ZK_SERVER_SCRIPT, ['start-foreground', cfg], {
    logFile,
    env: { ...process.env, ZOOCFGDIR: dir, ZOO_LOG_DIR: dir, JVMFLAGS: '-Xmx512m' },
  });
  await waitFor('ZooKeeper', async () => (await fourLetterWord(port, 'ruok', host)) === 'imok', { timeoutMs: 60_000, pid, logFile });
  // ruok answers before the server takes sessions; srvr answers only once it serves.
  await waitFor('ZooKeeper', async () => (await fourLetterWord(port, 'srvr', host)).includes('Mode:'), { timeoutMs: 60_000, pid, logFile });
  return pid;
}
