/**
 * `node dist/dev/chdb/main.js --data DIR --port P`: one dev-cluster ClickHouse made of ClickHouse's
 * engine from the `chdb` package (a dev dependency) and an HTTP front that speaks ClickHouse's
 * HTTP interface. For development and tests only: it never ships in the Docker image.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ChdbFront, type ChdbSession } from './front.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      data: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string' },
      password: { type: 'string', default: '' },
    },
  });
  if (!values.data || !values.port) throw new Error('usage: main.js --data DIR --port PORT [--host HOST] [--password P]');
  mkdirSync(values.data, { recursive: true });
  const tmpDir = join(values.data, 'tmp', 'front');
  mkdirSync(tmpDir, { recursive: true });
  let chdb: { Session: new (path: string) => ChdbSession };
  try {
    chdb = (await import('chdb')) as unknown as typeof chdb;
  } catch (err) {
    throw new Error(`the chdb backend needs the npm package chdb (a dev dependency: run npm ci): ${(err as Error).message}`);
  }
  const session = new chdb.Session(values.data);
  const version = Buffer.from((await session.queryAsync('SELECT version()', { format: 'TabSeparated' })).bytes()).toString('utf8').trim();
  const front = new ChdbFront(session, version, {
    host: values.host!,
    port: Number(values.port),
    tmpDir,
    password: values.password!,
    serverDefaults: { async_insert: '0' },
  });
  await front.init();
  const port = await front.listen();
  process.stdout.write(`${JSON.stringify({ msg: 'chdb front listening', version, port, data: values.data, pid: process.pid })}\n`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    front
      .close()
      .then(() => session.close())
      .then(
        () => process.exit(0),
        () => process.exit(1),
      );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`chdb front: ${(err as Error).message}\n`);
  process.exit(1);
});
