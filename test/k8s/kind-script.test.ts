import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../src/dev/cluster.js';
import { builtCli } from '../support/built-cli.js';

const KIND_SH = join(PACKAGE_ROOT, 'test', 'k8s', 'kind.sh');
const LIB_SH = join(PACKAGE_ROOT, 'test', 'k8s', 'lib.sh');
const MAKE_SECRETS = join(PACKAGE_ROOT, 'k8s', 'overlays', 'kind', 'make-secrets.sh');
const REPLICA_PODS = ['clickhouse-shard1-0', 'clickhouse-shard1-1', 'clickhouse-shard1-2'];
// By absolute path: some runs below get a PATH that holds stubs only.
const BASH = execFileSync('sh', ['-c', 'command -v bash'], { encoding: 'utf8' }).trim();

const scratch: string[] = [];
const newDir = (what: string) => {
  const dir = mkdtempSync(join(tmpdir(), `chorus-kind-${what}-`));
  scratch.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

/** Executables in a fresh dir, to put first on PATH. */
function stubs(scripts: Record<string, string>): string {
  const dir = newDir('bin');
  for (const [name, body] of Object.entries(scripts)) {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  }
  return dir;
}

/** A stub that records how it was called into `calls` and succeeds. */
const recorder = (name: string, calls: string) => `echo "${name} $*" >> '${calls}'`;
const recordedCalls = (calls: string) => (existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n') : []);

function runKindScript(path: string) {
  const started = Date.now();
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: path };
  delete env.KEEP_CLUSTER;
  const run = spawnSync(BASH, [KIND_SH], { encoding: 'utf8', env, timeout: 60_000 });
  return { ...run, seconds: (Date.now() - started) / 1000 };
}

const DOCKER_WITHOUT_ENGINE = 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?';

const hasShellcheck = spawnSync('sh', ['-c', 'command -v shellcheck']).status === 0;
describe('the kind scripts', () => {
  it.skipIf(!hasShellcheck)('pass shellcheck, sourced files followed (shellcheck is the Debian package of that name)', () => {
    const run = spawnSync('shellcheck', ['-x', KIND_SH, LIB_SH, MAKE_SECRETS], { encoding: 'utf8', cwd: PACKAGE_ROOT });
    expect(run.stdout + run.stderr).toBe('');
    expect(run.status).toBe(0);
  });
});

/** Issue 10: test/k8s/kind.sh refuses to start where it cannot run, and touches nothing. */
describe('kind.sh preflight', () => {
  it('exits 2 at once when docker cannot reach an engine, before any kind or kubectl call', () => {
    const calls = join(newDir('calls'), 'calls');
    const bin = stubs({
      docker: `${recorder('docker', calls)}\n[ "$1" = info ] && { echo '${DOCKER_WITHOUT_ENGINE}' >&2; exit 1; }\nexit 0`,
      kind: recorder('kind', calls),
      kubectl: recorder('kubectl', calls),
    });
    const run = runKindScript(`${bin}:${process.env.PATH}`);
    expect(run.status).toBe(2);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stderr).toMatch(/^kind\.sh: docker cannot reach a Docker engine \(docker info: Cannot connect to the Docker daemon.*\): start the Docker daemon/);
    expect(run.seconds).toBeLessThan(10);
    expect(recordedCalls(calls)).toEqual(['docker info']);
  });

  // The same with this machine's own docker client, which has no engine to reach here.
  const dockerClient = spawnSync('sh', ['-c', 'command -v docker']).status === 0;
  const engineReachable = dockerClient && spawnSync('docker', ['info'], { stdio: 'ignore', timeout: 30_000 }).status === 0;
  it.skipIf(!dockerClient || engineReachable)("exits 2 with this machine's docker client, which reaches no engine", () => {
    const calls = join(newDir('calls'), 'calls');
    const bin = stubs({ kind: recorder('kind', calls), kubectl: recorder('kubectl', calls) });
    const run = runKindScript(`${bin}:${process.env.PATH}`);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/^kind\.sh: docker cannot reach a Docker engine/);
    expect(run.seconds).toBeLessThan(30);
    expect(recordedCalls(calls)).toEqual([]);
  });

  it('exits 2 naming kind, and where to get it, when kind is missing', () => {
    const calls = join(newDir('calls'), 'calls');
    // Stubs only on PATH: no kind anywhere, whatever this machine has installed.
    const bin = stubs({ docker: recorder('docker', calls), kubectl: recorder('kubectl', calls) });
    const run = runKindScript(bin);
    expect(run.status).toBe(2);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stderr).toMatch(/^kind\.sh: kind is missing: install it \(https:\/\/kind\.sigs\.k8s\.io\//);
    expect(recordedCalls(calls)).toEqual(['docker info']);
  });
});

describe('k8s/overlays/kind/make-secrets.sh', () => {
  const SECRET_FILES = ['admin-token', 'clickhouse-password', 'zookeeper-auth'];
  const EXPECTED_FILES = ['ca.crt', 'ca.key', ...REPLICA_PODS.flatMap((pod) => [`${pod}.crt`, `${pod}.key`]), ...SECRET_FILES].sort();
  const contents = (dir: string) => Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f), 'utf8')]));
  const makeSecrets = (...args: string[]) => {
    const run = spawnSync(BASH, [MAKE_SECRETS, ...args], { encoding: 'utf8', timeout: 120_000 });
    expect(run.status, run.stderr).toBe(0);
  };

  beforeAll(() => {
    builtCli();
  });

  it('writes every file the secretGenerator reads: certificates of the pods signed by the CA, random secrets', () => {
    const dir = join(newDir('secrets'), 'secrets');
    makeSecrets(dir);
    expect(readdirSync(dir).sort()).toEqual(EXPECTED_FILES);
    const ca = new X509Certificate(readFileSync(join(dir, 'ca.crt')));
    for (const pod of REPLICA_PODS) {
      const cert = new X509Certificate(readFileSync(join(dir, `${pod}.crt`)));
      expect(cert.verify(ca.publicKey), pod).toBe(true);
      expect(cert.subject).toBe(`CN=${pod}`);
      expect(cert.subjectAltName?.split(', ')).toContain(`DNS:${pod}`);
    }
    const files = contents(dir);
    // Secret values are the files' bytes: a trailing newline would be part of the password.
    expect(files['admin-token']).toMatch(/^[0-9a-f]{48}$/);
    expect(files['clickhouse-password']).toMatch(/^[0-9a-f]{48}$/);
    expect(files['zookeeper-auth']).toMatch(/^chorus:[0-9a-f]{48}$/);
    expect(new Set(SECRET_FILES.map((f) => files[f]!.replace('chorus:', ''))).size).toBe(3);
  });

  it('keeps what it wrote when run again, reissues only what is missing, and regenerates all with --force', () => {
    const dir = join(newDir('secrets'), 'secrets');
    makeSecrets(dir);
    const first = contents(dir);

    makeSecrets(dir);
    expect(contents(dir)).toEqual(first);

    unlinkSync(join(dir, 'clickhouse-shard1-1.key'));
    makeSecrets(dir);
    const reissued = contents(dir);
    expect(reissued['clickhouse-shard1-1.crt']).not.toBe(first['clickhouse-shard1-1.crt']);
    const others = (files: Record<string, string>) => Object.fromEntries(Object.entries(files).filter(([file]) => !file.startsWith('clickhouse-shard1-1.')));
    expect(others(reissued)).toEqual(others(first));

    makeSecrets('--force', dir);
    const forced = contents(dir);
    expect(Object.keys(forced).sort()).toEqual(EXPECTED_FILES);
    for (const file of EXPECTED_FILES) expect(forced[file], file).not.toBe(first[file]);
  });

  it('refuses a pod name that could write outside DIR', () => {
    const dir = newDir('secrets');
    const run = spawnSync(BASH, [MAKE_SECRETS, dir], { encoding: 'utf8', env: { ...process.env, REPLICA_PODS: 'clickhouse-shard1-0 ../x' } });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/REPLICA_PODS: '\.\.\/x' is not a pod name/);
    expect(readdirSync(dir)).toEqual([]);
  });
});

/**
 * lib.sh's helpers run only against a kind cluster; here they run against a kubectl whose
 * `exec` runs the command on this machine, with stand-ins for clickhouse-client, zkCli.sh and
 * a Chorus HTTP endpoint, so that what they send and how they judge the answers is checked.
 */
describe('test/k8s/lib.sh helpers', () => {
  let fake: string;
  let bin: string;

  beforeAll(() => {
    fake = newDir('fake');
    bin = stubs({
      kubectl: `echo "$*" >> '${fake}/kubectl.log'
while [ "$1" = --context ] || [ "$1" = -n ]; do shift 2; done
case "$1" in
  exec)
    pod=$2; shift 2
    while [ "$1" != -- ]; do [ "$1" = -c ] && { container=$2; shift; }; shift; done
    shift
    # Only the ClickHouse container has the password, as in the pods.
    password=""
    [ "$container" = clickhouse ] && password=pw
    POD=$pod CONTAINER=$container CLICKHOUSE_DEFAULT_PASSWORD=$password exec "$@" ;;
  *) exit 1 ;;
esac`,
      'clickhouse-client': `cat '${fake}'/digest-$POD`,
      'zkCli.sh': `cat '${fake}/znodes'`,
    });
  });

  const helper = (script: string, args: string[] = []) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(BASH, ['-c', `set -euo pipefail; source '${LIB_SH}'; ${script}`, 'helper', ...args], { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` }, timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  async function withChorusEndpoint(answers: Array<{ status: number; headers?: Record<string, string>; body?: string }>, run: (url: string) => Promise<void>) {
    const requests: Array<{ url: string; authorization?: string; body: string }> = [];
    const server: Server = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        requests.push({ url: req.url ?? '', authorization: req.headers.authorization, body });
        const answer = answers[Math.min(requests.length - 1, answers.length - 1)]!;
        res.writeHead(answer.status, answer.headers).end(answer.body ?? '');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await run(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    } finally {
      server.close();
    }
    return requests;
  }

  it('chorus_insert posts the rows with the token and basic auth, and retries a 5xx with the same body', async () => {
    const rows = '{"ts":"2026-01-15 12:00:00","id":1,"payload":"row-1"}\n';
    let result = { code: -1, stdout: '', stderr: '' };
    const requests = await withChorusEndpoint(
      [{ status: 503, body: 'not ready' }, { status: 200, headers: { 'x-chorus-lsn': '7', 'x-chorus-deduplicated': '1' } }],
      async (url) => {
        result = await helper('SHARD_CLIENT_URL=$1; chorus_insert default.events "$2" retried-token', [url, rows]);
      },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim()).toBe('lsn=7 deduplicated=1');
    expect(requests).toHaveLength(2);
    for (const request of requests) {
      const url = new URL(request.url, 'http://x');
      expect(url.searchParams.get('query')).toBe('INSERT INTO default.events FORMAT JSONEachRow');
      expect(url.searchParams.get('insert_deduplication_token')).toBe('retried-token');
      expect(request.authorization).toBe(`Basic ${Buffer.from('default:pw').toString('base64')}`);
      expect(request.body).toBe(rows);
    }
    expect(readFileSync(join(fake, 'kubectl.log'), 'utf8')).toContain('--context kind-chorus -n chorus exec clickhouse-shard1-0 -c chorus -- node -e');
  });

  it('chorus_insert fails at once on a refusal, with the answer', async () => {
    let result = { code: -1, stdout: '', stderr: '' };
    const requests = await withChorusEndpoint([{ status: 400, body: 'CHORUS_BAD_DATA: no such column' }], async (url) => {
      result = await helper('SHARD_CLIENT_URL=$1; chorus_insert default.events "{}"', [url]);
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('HTTP 400: CHORUS_BAD_DATA: no such column');
    expect(requests).toHaveLength(1);
    expect(new URL(requests[0]!.url, 'http://x').searchParams.has('insert_deduplication_token')).toBe(false);
  });

  it('wait_for_convergence passes when every replica holds the expected rows, and names them when not', async () => {
    for (const pod of REPLICA_PODS) writeFileSync(join(fake, `digest-${pod}`), '110\t123456789\n');
    expect((await helper('wait_for_convergence default.events 110 5')).code).toBe(0);

    writeFileSync(join(fake, 'digest-clickhouse-shard1-2'), '100\t987\n');
    const diverged = await helper('wait_for_convergence default.events 110 1');
    expect(diverged.code).toBe(1);
    expect(diverged.stderr).toContain('replicas did not converge to 110 rows of default.events within 1s');
    expect(diverged.stderr).toContain('clickhouse-shard1-2=100 987');

    for (const pod of REPLICA_PODS) writeFileSync(join(fake, `digest-${pod}`), '100\t5\n');
    expect((await helper('wait_for_convergence default.events 110 1')).code).toBe(1);
  });

  it("check_shard_znodes counts the shard's root and what is under it, not a neighbour's", async () => {
    const chatter = 'Connecting to 127.0.0.1:2181\nWATCHER::\nWatchedEvent state:SyncConnected type:None path:null\n';
    const shard1 = ['/chorus/default/shard1', '/chorus/default/shard1/a', '/chorus/default/shard1/b'];
    writeFileSync(join(fake, 'znodes'), `${chatter}/chorus\n/chorus/default\n${shard1.join('\n')}\n/chorus/default/shard10\n/chorus/default/shard2/x\n`);
    const fine = await helper('check_shard_znodes 4');
    expect(fine.code, fine.stderr).toBe(0);
    expect(fine.stderr).toContain('znodes of the shard (3)');

    writeFileSync(join(fake, 'znodes'), `${chatter}${[...shard1, '/chorus/default/shard1/c', '/chorus/default/shard1/c/d'].join('\n')}\n`);
    const tooMany = await helper('check_shard_znodes 4');
    expect(tooMany.code).toBe(1);
    expect(tooMany.stderr).toContain('5 znodes under /chorus/default/shard1, more than 4');
    expect(tooMany.stderr).toContain('/chorus/default/shard1/c/d');

    writeFileSync(join(fake, 'znodes'), `${chatter}Node does not exist: /chorus\n`);
    expect((await helper('check_shard_znodes 4')).stderr).toContain('no znode under /chorus/default/shard1');
  });
});
