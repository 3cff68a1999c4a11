import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { ZkSession } from '../../src/allocator/zk.js';
import { sleep } from '../../src/core/async.js';
import { silentLogger } from '../../src/core/logger.js';

describe('ZkSession', () => {
  it('does not wait forever on a server that accepts the connection and never answers the handshake', async () => {
    let connections = 0;
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => {
      connections++;
      sockets.push(socket);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const zk = new ZkSession(`127.0.0.1:${port}`, { sessionTimeoutMs: 3000, timeoutMs: 1000 }, silentLogger());
    try {
      zk.start();
      // The handshake limit is max(2 s, a third of the session timeout): within 6 s the
      // session has given up on the first connection at least once and connected again.
      await sleep(6000);
      expect(connections).toBeGreaterThanOrEqual(2);
      expect(zk.isConnected).toBe(false);
    } finally {
      zk.close();
      for (const s of sockets) s.destroy();
      silent.close();
    }
  }, 15_000);
});
