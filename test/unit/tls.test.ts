import * as grpc from '@grpc/grpc-js';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { digestAcls } from '../../src/allocator/zk.js';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/core/logger.js';
import { createDevCa, issueDevCertificate } from '../../src/dev/certs.js';
import { readTlsMaterial, tlsPathsOf } from '../../src/tls/material.js';
import { TlsWatcher } from '../../src/tls/watcher.js';
import { PeerTransport } from '../../src/tls/transport.js';
import { chorusV1 } from '../../src/gossip/proto.js';

const scratch = () => mkdtempSync(join(tmpdir(), 'chorus-tls-'));

describe('TLS settings and files', () => {
  it('without files and without insecure there is no transport: CONFIG_INVALID naming the keys', () => {
    const config = loadConfig({ env: { CHORUS_REPLICA: 'r1', CHORUS_DATA_DIR: '/tmp/x' } });
    expect(() => tlsPathsOf(config.tls)).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID', message: expect.stringContaining('tls.ca, tls.cert, tls.key') }));
    expect(tlsPathsOf({ ...config.tls, insecure: true })).toBeNull();
    const fromEnv = loadConfig({ env: { CHORUS_REPLICA: 'r1', CHORUS_DATA_DIR: '/tmp/x', CHORUS_TLS_CA: '/a', CHORUS_TLS_CERT: '/b', CHORUS_TLS_KEY: '/c' } });
    expect(tlsPathsOf(fromEnv.tls)).toEqual({ ca: '/a', cert: '/b', key: '/c' });
  });

  it('zookeeper.auth must be user:password', () => {
    const base = { CHORUS_REPLICA: 'r1', CHORUS_DATA_DIR: '/tmp/x' };
    expect(() => loadConfig({ env: { ...base, CHORUS_ZOOKEEPER_AUTH: 'no-colon' } })).toThrow(/zookeeper.auth/);
    expect(loadConfig({ env: { ...base, CHORUS_ZOOKEEPER_AUTH: 'chorus:s3:cret' } }).zookeeper.auth).toBe('chorus:s3:cret');
  });

  it("the digest ACL id is ZooKeeper's user:base64(sha1(user:password))", () => {
    // As ZooKeeper's DigestAuthenticationProvider.generateDigest computes it (here: with openssl).
    const { znode } = digestAcls('super:secret');
    expect(znode.map((a) => `${a.id.scheme}:${a.id.id}`)).toEqual(['digest:super:lK75jTNcA+U9vtVEw5vB51mj/w4=', 'world:anyone']);
  });

  it('reads a set, names its CN, and refuses a key that is not the certificate’s', () => {
    const dir = scratch();
    createDevCa(dir);
    const r1 = issueDevCertificate(dir, 'r1');
    const r2 = issueDevCertificate(dir, 'r2');
    expect(readTlsMaterial(r1).name).toBe('r1');
    expect(() => readTlsMaterial({ ...r1, key: r2.key })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    expect(() => readTlsMaterial({ ...r1, cert: join(dir, 'missing.crt') })).toThrow(/cannot read tls.cert/);
  });

  it('a rotation caught halfway is ignored until the set fits together again', () => {
    const dir = scratch();
    createDevCa(dir);
    const live = issueDevCertificate(dir, 'r1', join(dir, 'live'));
    const next = issueDevCertificate(dir, 'r1', join(dir, 'next'));
    const watcher = new TlsWatcher(live, 60_000, silentLogger());
    const seen: string[] = [];
    watcher.onChange((m) => seen.push(m.cert.toString()));
    const original = readFileSync(live.cert);

    watcher.check();
    expect(seen).toEqual([]);
    // The certificate is new, the key still old: not usable, the previous set stays.
    copyFileSync(next.cert, live.cert);
    watcher.check();
    expect(seen).toEqual([]);
    expect(watcher.material.cert.equals(original)).toBe(true);
    // A file being written (here: truncated) changes nothing either.
    writeFileSync(live.key, '');
    watcher.check();
    expect(seen).toEqual([]);
    // The key arrives: the new set is taken, once.
    copyFileSync(next.key, live.key);
    watcher.check();
    watcher.check();
    expect(seen).toEqual([readFileSync(next.cert).toString()]);
    expect(watcher.material.cert.equals(readFileSync(next.cert))).toBe(true);
  });

  it('identify(call) gives the replica name the caller’s certificate proves, and null in plaintext', async () => {
    const dir = scratch();
    createDevCa(dir);
    const transport = (files: { ca: string; cert: string; key: string } | null) =>
      PeerTransport.fromSettings({ ca: '', cert: '', key: '', ...files, insecure: files === null, reloadIntervalMs: 60_000 }, silentLogger());
    const Gossip = chorusV1('chorus/v1/gossip.proto').Gossip!;
    const identifiedBy = async (server: PeerTransport, client: PeerTransport, dial: string) => {
      let seen: string | null | undefined;
      const s = new grpc.Server();
      s.addService(Gossip.service, {
        push: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          seen = server.identify(call);
          cb(null, { added: 0 });
        },
      });
      const port = await new Promise<number>((resolve, reject) => s.bindAsync('127.0.0.1:0', server.grpcServerCredentials(), (err, p) => (err ? reject(err) : resolve(p))));
      const c = new Gossip(`127.0.0.1:${port}`, client.grpcChannelCredentials(dial), client.grpcChannelOptions(dial)) as unknown as {
        push: (req: unknown, cb: (err: Error | null) => void) => void;
        close: () => void;
      };
      try {
        await new Promise<void>((resolve, reject) => c.push({ from: 'r1', entries: [] }, (err) => (err ? reject(err) : resolve())));
        return seen;
      } finally {
        c.close();
        s.forceShutdown();
      }
    };
    const r1 = transport(issueDevCertificate(dir, 'r1'));
    const r2 = transport(issueDevCertificate(dir, 'r2'));
    expect(await identifiedBy(r1, r2, 'r1')).toBe('r2');
    expect(await identifiedBy(transport(null), transport(null), 'r1')).toBeNull();
  });
});
