import * as grpc from '@grpc/grpc-js';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import zookeeper from 'node-zookeeper-client';
import { runCli } from '../support/built-cli.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Allocator } from '../../src/allocator/allocator.js';
import { aclPermission, ZkSession } from '../../src/allocator/zk.js';
import { silentLogger } from '../../src/core/logger.js';
import { createDevCa, issueDevCertificate, type TlsFiles } from '../../src/dev/certs.js';
import { devKill, devStart, scratchRoot } from '../../src/dev/cluster.js';
import { chorusV1 } from '../../src/gossip/proto.js';
import { PeerTransport } from '../../src/tls/transport.js';
import { grpcCredentials, httpsAgent, TestCluster, tlsFor } from '../support/cluster.js';

type Unary = (req: unknown, metadata: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => void;
type AnyClient = grpc.Client & Record<string, Unary>;

/** One unary call; resolves with the reply or the gRPC status code it failed with. */
function call(client: AnyClient, method: string, req: unknown, token = '', keepOpen = false): Promise<{ ok: true; reply: unknown } | { ok: false; code: number; details: string }> {
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => {
    client[method]!(req, metadata, { deadline: Date.now() + 5000 }, (err, reply) => {
      if (!keepOpen) client.close();
      resolve(err ? { ok: false, code: err.code, details: err.details } : { ok: true, reply });
    });
  });
}

const Gossip = () => chorusV1('chorus/v1/gossip.proto').Gossip!;
const Admin = () => chorusV1('chorus/v1/admin.proto').Admin!;

/** GET/POST on an interserver port; resolves with the status or the transport error's message. */
function interserver(url: string, agent: https.Agent, method = 'GET'): Promise<{ status: number } | { error: string }> {
  return new Promise((resolve) => {
    const req = https.request(url, { method, agent }, (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0 });
    });
    req.on('error', (err) => resolve({ error: err.message }));
    req.end();
  });
}

/** The fingerprint of the certificate a TLS port presents (gRPC's needs ALPN h2). */
function presented(port: number, creds: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...creds, servername: 'r1', ALPNProtocols: ['h2', 'http/1.1'], checkServerIdentity: () => undefined }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

const cli = runCli;

/** Issue 9, items 1 and 5: mutual TLS between peers, and ZooKeeper digest ACLs. */
describe('peer authentication', () => {
  let cluster: TestCluster;
  let otherCa: { dir: string; r2: TlsFiles; cli: TlsFiles };
  const TABLE = 'default.sec';

  beforeAll(async () => {
    cluster = await TestCluster.start({ replicas: 2 });
    await cluster.onEvery(`CREATE TABLE ${TABLE} (day Date, id UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY id`);
    expect((await insert(0, 1)).status).toBe(200);
    expect((await cluster.waitConverged(TABLE, 'id', 1, 20_000)).map((f) => f.count)).toEqual([1, 1]);
    // A CA the cluster does not trust, with a certificate claiming to be r2.
    const dir = mkdtempSync(join(scratchRoot(), 'other-ca-'));
    createDevCa(dir, 'impostor-ca');
    otherCa = { dir, r2: issueDevCertificate(dir, 'r2'), cli: issueDevCertificate(dir, 'chorus-cli') };
  });

  afterAll(async () => {
    await cluster?.stop();
    if (otherCa) rmSync(otherCa.dir, { recursive: true, force: true });
  });

  const insert = (replica: number, id: number) => cluster.chorus(replica, { query: `INSERT INTO ${TABLE} FORMAT TabSeparated`, body: `2026-11-01\t${id}\n` });
  const status = async (i: number) => (await (await fetch(`${cluster.replica(i).http}/_chorus/status`)).json()) as { maxLsn: number };
  const snapshotsOn = (i: number) => {
    const dir = join(cluster.replica(i).dir, 'chorus', 'snapshots');
    return existsSync(dir) ? readdirSync(dir).length : 0;
  };
  /** What a forged message would change: every replica's highest LSN, rows, and snapshots. */
  const observable = async () => ({
    maxLsn: await Promise.all(cluster.replicas.map((_, i) => status(i).then((s) => Number(s.maxLsn)))),
    rows: (await cluster.fingerprints(TABLE, 'id')).map((f) => f.count),
    snapshots: cluster.replicas.map((_, i) => snapshotsOn(i)),
  });

  const forgedTruncate = (lsn: number) => ({
    from: 'r2',
    entries: [
      { lsn, kind: 'truncate', database: 'default', table: 'sec', partitionId: '', blockId: '', partName: '', checksumsSha256: '', rows: 0, bytes: 0, files: [], origin: 'r2', allocatedAtMs: Date.now(), barrier: 0, partition: '' },
    ],
  });

  it('the gRPC port answers a CA-signed client, and refuses one without a certificate or with another CA’s, changing nothing', async () => {
    const r1 = cluster.replica(0);
    const token = cluster.info.adminToken;
    // The same calls succeed with the cluster's certificate: the refusals below are TLS's.
    const trusted = await call(new (Admin())(r1.grpc, grpcCredentials(cluster.info)) as AnyClient, 'getStatus', {}, token);
    expect(trusted.ok).toBe(true);

    const before = await observable();
    const ca = readFileSync(cluster.info.tls.cli!.ca);
    const untrusted: Array<[string, grpc.ChannelCredentials]> = [
      ['plaintext', grpc.credentials.createInsecure()],
      ['TLS without a client certificate', grpc.credentials.createSsl(ca, null, null, { checkServerIdentity: () => undefined })],
      ['a certificate from another CA (claiming r2)', grpc.credentials.createSsl(ca, readFileSync(otherCa.r2.key), readFileSync(otherCa.r2.cert), { checkServerIdentity: () => undefined })],
    ];
    for (const [what, creds] of untrusted) {
      const push = await call(new (Gossip())(r1.grpc, creds) as AnyClient, 'push', forgedTruncate(before.maxLsn[0]! + 1));
      const adminStatus = await call(new (Admin())(r1.grpc, creds) as AnyClient, 'getStatus', {}, token);
      const pause = await call(new (Admin())(r1.grpc, creds) as AnyClient, 'pause', {}, token);
      for (const result of [push, adminStatus, pause]) {
        expect(result.ok, what).toBe(false);
        expect(result.ok ? 0 : result.code, what).toBe(grpc.status.UNAVAILABLE);
      }
    }
    expect(await observable()).toEqual(before);
    expect((await status(0)) as unknown as { paused: boolean }).toMatchObject({ paused: false });
  });

  it('the interserver port answers a CA-signed client, and refuses one without a certificate or with another CA’s, changing nothing', async () => {
    const base = cluster.replica(0).interserver;
    expect(await interserver(`${base}/v1/digest`, httpsAgent(cluster.info))).toEqual({ status: 200 });
    // Parts and snapshots only to a member: the CLI's certificate (CA-signed, naming no member) is refused.
    expect(await interserver(`${base}/v1/parts/1/x`, httpsAgent(cluster.info))).toEqual({ status: 403 });
    expect(await interserver(`${base}/v1/snapshots`, httpsAgent(cluster.info), 'POST')).toEqual({ status: 403 });
    expect(await interserver(`${base}/v1/parts/1/x`, httpsAgent(cluster.info, cluster.replica(1).tls))).toEqual({ status: 404 });

    const before = await observable();
    const { ca } = tlsFor(cluster.info)!;
    const untrusted: Array<[string, https.Agent]> = [
      ['TLS without a client certificate', new https.Agent({ ca, checkServerIdentity: () => undefined })],
      ['a certificate from another CA (claiming r2)', new https.Agent({ ca, cert: readFileSync(otherCa.r2.cert), key: readFileSync(otherCa.r2.key), checkServerIdentity: () => undefined })],
    ];
    for (const [what, agent] of untrusted) {
      for (const [method, path] of [['GET', '/v1/digest'], ['POST', '/v1/snapshots'], ['GET', '/v1/parts/1/x']]) {
        const result = await interserver(`${base}${path}`, agent, method);
        expect('error' in result, `${what}: ${method} ${path} -> ${JSON.stringify(result)}`).toBe(true);
      }
    }
    // Plain HTTP gets nothing either.
    const plain = await fetch(base.replace('https:', 'http:') + '/v1/digest').then(
      (r) => r.status,
      () => 'refused',
    );
    expect(plain).not.toBe(200);
    expect(await observable()).toEqual(before);
  });

  it('a replica dialing peer X accepts only a server certificate that names X', async () => {
    const cli = cluster.info.tls.cli!;
    const transport = PeerTransport.fromSettings({ ...cli, insecure: false, reloadIntervalMs: 60_000 }, silentLogger());
    const r1 = cluster.replica(0);
    // r1's certificate presented where r2 is expected: refused by the client, over both ports.
    const asR2 = transport.interserverClient({ name: 'r2', interserver: r1.interserver });
    await expect(asR2.text('/v1/digest', { timeoutMs: 5000 })).rejects.toThrow(/r2/);
    asR2.close();
    const asR1 = transport.interserverClient({ name: 'r1', interserver: r1.interserver });
    expect((await asR1.text('/v1/digest', { timeoutMs: 5000 })).status).toBe(200);
    asR1.close();
    const grpcAs = (name: string) => new (Admin())(r1.grpc, transport.grpcChannelCredentials(name), transport.grpcChannelOptions(name)) as AnyClient;
    expect(await call(grpcAs('r2'), 'getStatus', {}, cluster.info.adminToken)).toMatchObject({ ok: false, code: grpc.status.UNAVAILABLE });
    expect(await call(grpcAs('r1'), 'getStatus', {}, cluster.info.adminToken)).toMatchObject({ ok: true });
  });

  it('a new pair written over the old files is presented by both ports without a restart; a newly issued client certificate is accepted', async () => {
    const r1 = cluster.replica(0);
    const creds = tlsFor(cluster.info)!;
    const before = { interserver: await presented(r1.ports.interserver, creds), grpc: await presented(r1.ports.grpc, creds) };
    expect(before.interserver).toBe(before.grpc);
    // New CA-signed pairs over the files the sidecars were started with (as a Secret update does).
    for (const r of cluster.replicas) issueDevCertificate(cluster.info.tls.dir, r.name);
    const rotated = readFileSync(r1.tls!.cert);
    const newFingerprint = new X509Certificate(rotated).fingerprint256;
    expect(newFingerprint).not.toBe(before.grpc);
    await expect.poll(() => presented(r1.ports.interserver, creds), { timeout: 10_000, interval: 200 }).toBe(newFingerprint);
    await expect.poll(() => presented(r1.ports.grpc, creds), { timeout: 10_000, interval: 200 }).toBe(newFingerprint);
    // A client certificate issued after the start is accepted; gossip and part transfers go on
    // with the new certificates (r2 pulls r1's part, r1 r2's).
    const newClient = issueDevCertificate(cluster.info.tls.dir, 'chorus-cli-2');
    expect(await interserver(`${r1.interserver}/v1/digest`, httpsAgent(cluster.info, newClient))).toEqual({ status: 200 });
    expect(await call(new (Admin())(r1.grpc, grpcCredentials(cluster.info, newClient)) as AnyClient, 'getStatus', {}, cluster.info.adminToken)).toMatchObject({ ok: true });
    expect((await insert(0, 2)).status).toBe(200);
    expect((await insert(1, 3)).status).toBe(200);
    expect((await cluster.waitConverged(TABLE, 'id', 3, 20_000)).map((f) => f.count)).toEqual([3, 3]);
  });

  it('a new CA replaces the old one on disk: servers and peer clients switch to it without a restart', async () => {
    const r1 = cluster.replica(0);
    const oldCli = tlsFor(cluster.info)!;
    const rowsBefore = (await cluster.fingerprints(TABLE, 'id'))[0]!.count;
    // Clients made as a sidecar makes its peer clients (on the CLI's files), connected before
    // the rotation.
    const watched = PeerTransport.fromSettings({ ...cluster.info.tls.cli!, insecure: false, reloadIntervalMs: 200 }, silentLogger());
    watched.start();
    const partsClient = watched.interserverClient({ name: 'r1', interserver: r1.interserver });
    const gossipChannel = new (Admin())(r1.grpc, watched.grpcChannelCredentials('r1'), watched.grpcChannelOptions('r1')) as AnyClient;
    const digestStatus = () => partsClient.text('/v1/digest', { timeoutMs: 2000 }).then((r) => r.status, (err: Error) => err.message);
    const channelWorks = async () => (await call(gossipChannel, 'getStatus', {}, cluster.info.adminToken, true)).ok;
    expect(await digestStatus()).toBe(200);
    expect(await channelWorks()).toBe(true);
    createDevCa(cluster.info.tls.dir, 'chorus-dev-ca-2');
    for (const r of cluster.replicas) issueDevCertificate(cluster.info.tls.dir, r.name);
    issueDevCertificate(cluster.info.tls.dir, 'chorus-cli');
    // Trusting only the new CA, a client reaches r1 only once r1 presents a certificate it signed.
    await expect.poll(() => interserver(`${r1.interserver}/v1/digest`, httpsAgent(cluster.info)), { timeout: 10_000, interval: 200 }).toEqual({ status: 200 });
    await expect.poll(async () => (await call(new (Admin())(r1.grpc, grpcCredentials(cluster.info)) as AnyClient, 'getStatus', {}, cluster.info.adminToken)).ok, { timeout: 10_000, interval: 200 }).toBe(true);
    // The old CA's certificates are refused from now on.
    const oldAgent = new https.Agent({ ...oldCli, ca: [oldCli.ca, tlsFor(cluster.info)!.ca], checkServerIdentity: () => undefined });
    expect('error' in (await interserver(`${r1.interserver}/v1/digest`, oldAgent))).toBe(true);
    // Connections opened before a rotation keep their certificates; a restart of r1 closes them
    // all, and the clients must open new ones with the new files (the old would be refused).
    await devKill(cluster.info.dir, 'r1', 'sidecar', 'TERM');
    await devStart(cluster.info.dir, 'r1', 'sidecar');
    await expect.poll(digestStatus, { timeout: 10_000, interval: 200 }).toBe(200);
    await expect.poll(channelWorks, { timeout: 10_000, interval: 200 }).toBe(true);
    partsClient.close();
    gossipChannel.close();
    watched.stop();
    // Parts still move between the replicas: r2, not restarted, reconnects to r1 with the new files.
    expect((await insert(0, 10)).status).toBe(200);
    expect((await insert(1, 11)).status).toBe(200);
    expect((await cluster.waitConverged(TABLE, 'id', rowsBefore + 2, 20_000)).map((f) => f.count)).toEqual([rowsBefore + 2, rowsBefore + 2]);
  });

  it('the allocator znode refuses a ZooKeeper client without the digest, while inserts go on', async () => {
    const path = `/chorus/${cluster.info.cluster}/${cluster.info.shard}`;
    const connect = (auth?: string) =>
      new Promise<zookeeper.Client>((resolve) => {
        const client = zookeeper.createClient(cluster.info.zookeeper, { sessionTimeout: 10_000 });
        if (auth) client.addAuthInfo('digest', Buffer.from(auth));
        client.once('connected', () => resolve(client));
        client.connect();
      });
    const outcome = (fn: (cb: (err: unknown) => void) => void) =>
      new Promise<string>((resolve) => fn((err) => resolve(err ? String((err as { name?: string }).name) : 'ok')));

    const stranger = await connect();
    const wrong = await connect('chorus:not-the-password');
    try {
      const nextBefore = await cluster.nextLsn();
      for (const client of [stranger, wrong]) {
        expect(await outcome((cb) => client.setData(path, Buffer.from('{}'), -1, cb))).toBe('NO_AUTH');
        expect(await outcome((cb) => client.remove(path, -1, cb))).toBe('NO_AUTH');
        expect(await outcome((cb) => client.setACL(path, [new zookeeper.ACL(zookeeper.Permission.ALL, new zookeeper.Id('world', 'anyone'))], -1, cb))).toBe('NO_AUTH');
        expect(await outcome((cb) => client.remove(`/chorus/${cluster.info.cluster}`, -1, cb))).toBe('NO_AUTH');
      }
      expect(await cluster.nextLsn()).toBe(nextBefore);
      expect((await insert(0, 4)).status).toBe(200);
      expect(await cluster.nextLsn()).toBe(nextBefore + 1);
    } finally {
      stranger.close();
      wrong.close();
    }
    // The digest's owner may write it (the same bytes back, at its version).
    const owner = await connect(cluster.info.zookeeperAuth);
    try {
      const { data, version } = await new Promise<{ data: Buffer; version: number }>((resolve, reject) =>
        owner.getData(path, (err, d, stat) => (err ? reject(err) : resolve({ data: d!, version: stat.version }))),
      );
      expect(await outcome((cb) => owner.setData(path, data, version, cb))).toBe('ok');
    } finally {
      owner.close();
    }
  });

  it('a znode made before zookeeper.auth was set gets the digest ACL when the allocator starts', async () => {
    const path = '/chorus/upgraded/shard1';
    const open = new ZkSession(cluster.info.zookeeper, { sessionTimeoutMs: 10_000, timeoutMs: 10_000 }, silentLogger());
    const guarded = new ZkSession(cluster.info.zookeeper, { sessionTimeoutMs: 10_000, timeoutMs: 10_000, auth: cluster.info.zookeeperAuth }, silentLogger());
    try {
      await open.mkdirp(path);
      expect((await open.getAcl(path)).map((a) => a.id.scheme)).toEqual(['world']);
      await new Allocator(guarded, { path, window: { entries: 1000, chunkEntries: 100, seconds: 0 }, maxBatch: 500, requestTimeoutMs: 10_000 }, silentLogger()).init();
      expect((await open.getAcl(path)).map((a) => `${a.id.scheme}:${aclPermission(a)}`).sort()).toEqual([`digest:${zookeeper.Permission.ALL}`, `world:${zookeeper.Permission.READ}`]);
      const { stat } = await open.getData(path);
      await expect(open.setData(path, Buffer.from('{}'), stat.version)).rejects.toMatchObject({ name: 'NO_AUTH' });
    } finally {
      open.close();
      guarded.close();
    }
  });
});

describe('running without TLS', () => {
  it('a sidecar without TLS files and without tls.insecure does not start', async () => {
    const dir = mkdtempSync(join(scratchRoot(), 'no-tls-'));
    const file = join(dir, 'chorus.yaml');
    writeFileSync(file, `replica: r1\ndataDir: ${join(dir, 'data')}\n`);
    const r = await cli(['serve', '--config', file]);
    rmSync(dir, { recursive: true, force: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('tls.ca, tls.cert, tls.key not set');
  });

  it('a dev cluster started insecure serves plaintext and says at start that peers are not authenticated', async () => {
    const cluster = await TestCluster.start({ replicas: 1, insecure: true });
    try {
      const log = readFileSync(join(cluster.replica(0).dir, 'sidecar.log'), 'utf8');
      expect(log).toMatch(/"level":40[^\n]*tls.insecure is set[^\n]*peers are not authenticated/);
      expect(cluster.replica(0).interserver).toMatch(/^http:/);
      const r = await cli(['status', '--grpc', cluster.replica(0).grpc, '--json', '--insecure'], { CHORUS_ADMIN_TOKEN: cluster.info.adminToken });
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toMatchObject({ asked: 'r1' });
    } finally {
      await cluster.stop();
    }
  });
});
