import { execFile, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { delimiter, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/config.js';
import { scratchRoot, SIDECAR_V8_FLAGS } from '../../src/dev/cluster.js';
import {
  aptPackages,
  buildContext,
  commandForm,
  isIgnored,
  keyValues,
  listFiles,
  parseDockerfile,
  parseDockerignore,
  runStages,
  simpleCommands,
  type Instruction,
  type Stage,
  type StageResult,
  type StepRecord,
} from '../support/dockerfile.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const ignorePatterns = parseDockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; license: string; engines: { node: string } };
const defaults = configSchema.parse({ replica: 'x', dataDir: '/x' });
const runtime = dockerfile.stages.at(-1)!;
const build = dockerfile.stages.find((s) => s.name === 'build')!;

const all = (stage: Stage, keyword: string): Instruction[] => stage.instructions.filter((i) => i.keyword === keyword);
const last = (stage: Stage, keyword: string): Instruction | undefined => all(stage, keyword).at(-1);
const isStageName = (ref: string) => dockerfile.stages.some((s) => s.name === ref);
/** A stage's base image, following FROM other-stage back to an image. */
const baseImage = (stage: Stage): string => (isStageName(stage.base) ? baseImage(dockerfile.stages.find((s) => s.name === stage.base)!) : stage.base);
const runStepsOf = (stage: Stage) => all(stage, 'RUN').flatMap((run) => simpleCommands((commandForm(run.args) as { shell: string }).shell ?? ''));
/** `npm ci --no-audit` -> `npm ci`: the step without the flags that only change what it prints or reports. */
const npmStep = (words: string[]) => words.filter((w) => !/^--(no-audit|no-fund|loglevel|silent)/.test(w)).join(' ');

describe('Dockerfile', () => {
  it('pins every base image by a tag other than latest, with a Node that package.json allows', () => {
    const images = [...new Set(dockerfile.stages.filter((s) => !isStageName(s.base)).map((s) => s.base))];
    expect(images.length).toBeGreaterThan(0);
    for (const image of images) {
      const tag = /^[^@]+:([\w][\w.-]*)$/.exec(image)?.[1];
      expect(tag, `${image} is pinned by a tag`).toBeDefined();
      expect(tag).not.toBe('latest');
      const nodeMajor = Number(/^node:(\d+)/.exec(image)?.[1]);
      expect(nodeMajor, `${image} is a node image with a major version in its tag`).toBeGreaterThan(0);
      expect(nodeMajor).toBeGreaterThanOrEqual(Number(/^>=\s*(\d+)/.exec(pkg.engines.node)?.[1]));
    }
  });

  it('builds with the npm steps setup.sh runs here, and runs on production dependencies only', () => {
    expect(runStepsOf(build).filter((w) => w[0] === 'npm').map(npmStep)).toEqual(['npm ci', 'npm run build']);
    const setup = simpleCommands(readFileSync(join(ROOT, 'scripts/setup.sh'), 'utf8'))
      .filter((w) => w[0] === 'npm')
      .map((w) => npmStep(w));
    expect(setup).toEqual(expect.arrayContaining(['npm ci', 'npm run build']));
    const deps = all(runtime, 'COPY').find((c) => c.args.endsWith('node_modules'));
    expect(deps, 'the runtime stage copies node_modules from a stage').toBeDefined();
    const depsStage = dockerfile.stages.find((s) => s.name === deps!.flags.get('from'))!;
    expect(runStepsOf(depsStage).filter((w) => w[0] === 'npm').map(npmStep)).toEqual(['npm ci --omit=dev']);
    // better-sqlite3 is compiled there for that Node: the runtime must run the same one.
    expect(baseImage(depsStage)).toBe(runtime.base);
  });

  it('carries no compiler at run time: the runtime stage starts from the image, not the toolchain stage', () => {
    expect(isStageName(runtime.base)).toBe(false);
    const runtimePackages = all(runtime, 'RUN').flatMap(aptPackages);
    expect(runtimePackages).toContain('tini');
    expect(runtimePackages.filter((p) => /^(g\+\+|gcc|make|python3?|build-essential|clang)$/.test(p))).toEqual([]);
    // Only the stages thrown away install the native module's toolchain.
    const toolchain = dockerfile.stages.filter((s) => all(s, 'RUN').flatMap(aptPackages).includes('g++'));
    expect(toolchain.map((s) => s.name)).not.toContain(runtime.name);
  });

  it("runs as uid and gid 101 (ClickHouse's user), numerically, with WORKDIR /app and NODE_ENV=production", () => {
    expect(last(runtime, 'USER')?.args).toBe('101:101');
    expect(last(runtime, 'WORKDIR')?.args).toBe('/app');
    const env = new Map(all(runtime, 'ENV').flatMap((e) => [...keyValues(e.args)]));
    expect(env.get('NODE_ENV')).toBe('production');
  });

  it('runs the sidecar with the V8 flags the dev cluster and the bench run it with', () => {
    const env = new Map(all(runtime, 'ENV').flatMap((e) => [...keyValues(e.args)]));
    expect(env.get('NODE_OPTIONS')?.split(/\s+/)).toEqual(SIDECAR_V8_FLAGS);
  });

  it('starts `chorus serve` under tini, with `chorus` on PATH', () => {
    const entrypoint = commandForm(last(runtime, 'ENTRYPOINT')!.args);
    expect(entrypoint, 'exec form, so that tini is PID 1').toHaveProperty('exec');
    const [init, separator, ...command] = (entrypoint as { exec: string[] }).exec;
    expect(init).toMatch(/(^|\/)tini$/);
    expect(separator).toBe('--');
    expect([['chorus', 'serve'], ['node', '/app/bin/chorus.js', 'serve']]).toContainEqual(command);
    const links = runStepsOf(runtime).filter((w) => w[0] === 'ln');
    expect(links.map((w) => w.slice(-2))).toContainEqual(['/app/bin/chorus.js', '/usr/local/bin/chorus']);
    expect(last(runtime, 'CMD'), 'arguments come from CHORUS_CONFIG and CHORUS_* variables').toBeUndefined();
  });

  it("exposes Chorus's default HTTP, interserver and gRPC ports", () => {
    const exposed = all(runtime, 'EXPOSE').flatMap((e) => e.args.split(/\s+/).map((p) => Number(p.replace(/\/tcp$/, ''))));
    expect(exposed.sort()).toEqual([defaults.http.port, defaults.interserver.port, defaults.grpc.port].sort());
  });

  it("labels the image with package.json's name, version and license", () => {
    const labels = new Map(all(runtime, 'LABEL').flatMap((l) => [...keyValues(l.args)]));
    expect(labels.get('org.opencontainers.image.title')).toBe(pkg.name);
    expect(labels.get('org.opencontainers.image.version')).toBe(pkg.version);
    expect(labels.get('org.opencontainers.image.licenses')).toBe(pkg.license);
    expect(labels.get('org.opencontainers.image.description')).toBeTruthy();
  });

  describe('HEALTHCHECK', () => {
    const healthcheck = last(runtime, 'HEALTHCHECK')!;
    const cmd = commandForm(healthcheck.args.replace(/^CMD\s+/, ''));
    const argv = 'exec' in cmd ? cmd.exec : ['/bin/sh', '-c', cmd.shell];
    const run = (env: NodeJS.ProcessEnv) =>
      promisify(execFile)(argv[0]!, argv.slice(1), { env: { PATH: process.env.PATH, ...env }, timeout: 10_000 }).then(
        (r) => ({ code: 0, stdout: r.stdout }),
        (err: { code?: number; stdout?: string }) => ({ code: err.code ?? -1, stdout: err.stdout ?? '' }),
      );

    it("fetches /healthz on Chorus's default HTTP port", async () => {
      expect(healthcheck.args).toMatch(/^CMD\s/);
      expect(healthcheck.flags.get('timeout'), 'a hung probe must end').toBeTruthy();
      // Stands in for fetch, so the URL is seen without anything listening on the default port.
      const dir = mkdtempSync(join(scratchRoot(), 'healthcheck-'));
      try {
        const preload = join(dir, 'fetch.mjs');
        writeFileSync(preload, "globalThis.fetch = async (url) => { process.stdout.write(String(url)); return { ok: true }; };\n");
        const result = await run({ NODE_OPTIONS: `--import=${preload}` });
        expect(result).toEqual({ code: 0, stdout: `http://127.0.0.1:${defaults.http.port}/healthz` });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('passes on 200, fails on 503 and when nothing listens, and follows CHORUS_HTTP_PORT', async () => {
      let status = 200;
      const paths: string[] = [];
      const server = createServer((req, res) => {
        paths.push(req.url ?? '');
        res.writeHead(status).end('{}');
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = String((server.address() as AddressInfo).port);
      try {
        expect((await run({ CHORUS_HTTP_PORT: port })).code).toBe(0);
        status = 503;
        expect((await run({ CHORUS_HTTP_PORT: port })).code).not.toBe(0);
        expect(paths).toEqual(['/healthz', '/healthz']);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
      expect((await run({ CHORUS_HTTP_PORT: port })).code).not.toBe(0);
    });
  });
});

describe('.dockerignore', () => {
  it('keeps what the build reads and leaves out local, generated and secret files', () => {
    for (const kept of ['package.json', 'package-lock.json', 'tsconfig.json', 'src/cli/main.ts', 'bin/chorus.js', 'proto/chorus/v1/admin.proto']) {
      expect(isIgnored(ignorePatterns, kept), kept).toBe(false);
    }
    const leftOut = [
      'node_modules/fastify/package.json',
      'dist/cli/main.js',
      '.git/HEAD',
      'test/k8s/dockerfile.test.ts',
      'test-results.json',
      '.chorus-dev/r1/sidecar.log',
      'k8s/overlays/kind/secrets/admin-token',
      'k8s/base/kustomization.yaml',
      'src/insert/debug.log',
      'src/node_modules/x.js',
      '.env',
    ];
    for (const path of leftOut) expect(isIgnored(ignorePatterns, path), path).toBe(true);
  });
});

describe("the image's stages, run outside Docker", () => {
  const keep = Boolean(process.env.CHORUS_KEEP_TEST_DIRS);
  let workDir: string;
  let contextFiles: string[];
  let stages: Map<string, StageResult>;
  let steps: StepRecord[];
  let app: string;
  const inApp = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, args, { cwd: app, encoding: 'utf8', env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_ENV: 'production', ...env } });

  beforeAll(async () => {
    const started = Date.now();
    workDir = mkdtempSync(join(scratchRoot(), 'docker-'));
    const context = join(workDir, 'context');
    contextFiles = buildContext(ROOT, context, ignorePatterns);
    const env: NodeJS.ProcessEnv = { ...process.env, npm_config_prefer_offline: 'true' };
    // What the test runner adds (vitest sets NODE_ENV=test; `npm test` its lifecycle variables
    // and its own node_modules/.bin on PATH) would change what the steps install or run.
    for (const name of Object.keys(env)) {
      if (/^(npm_lifecycle_|npm_package_|npm_config_(omit|include|production|only|also)$|npm_command$|INIT_CWD$|NODE_ENV$|VITEST)/.test(name)) delete env[name];
    }
    env.PATH = (env.PATH ?? '')
      .split(delimiter)
      .filter((p) => !p.includes(`node_modules${posix.sep}.bin`))
      .join(delimiter);
    ({ stages, steps } = await runStages({ dockerfile, context, workDir, env }));
    app = stages.get(runtime.name)!.dir;
    console.info(`Dockerfile stages run outside Docker in ${((Date.now() - started) / 1000).toFixed(0)} s under ${workDir}`);
    for (const step of steps) console.info(`  line ${step.line} (${step.stage}): ${step.skipped ? `skipped, ${step.skipped}` : `ran ${step.command}`}`);
  }, 20 * 60_000);

  afterAll(() => {
    if (workDir && !keep) rmSync(workDir, { recursive: true, force: true });
  });

  it('sends a build context of the sources, not node_modules, dist, tests or local state', () => {
    const topLevel = [...new Set(contextFiles.map((f) => f.split('/')[0]))].sort();
    expect(topLevel).toEqual(['bin', 'package-lock.json', 'package.json', 'proto', 'src', 'tsconfig.json']);
    expect(contextFiles).toContain('src/cli/main.ts');
    expect(contextFiles).toContain('proto/chorus/v1/gossip.proto');
  });

  it('ran every npm/node step, and skipped only OS setup, each for its reason', () => {
    const ran = steps.filter((s) => !s.skipped).map((s) => `${s.stage}: ${s.command}`);
    expect(ran).toEqual(['build: npm ci --no-audit --no-fund', 'build: npm run build', 'production-deps: npm ci --omit=dev --no-audit --no-fund']);
    for (const step of steps.filter((s) => s.skipped)) expect(step.skipped).toMatch(/apt-get|useradd|ln/);
  });

  it('leaves in the runtime stage only dist, bin, proto, package.json and its lock, and production node_modules', () => {
    expect(readdirSync(app).sort()).toEqual(['bin', 'dist', 'node_modules', 'package-lock.json', 'package.json', 'proto']);
    expect(existsSync(join(app, 'dist/cli/main.js'))).toBe(true);
    expect(listFiles(join(app, 'dist')).some((f) => f.startsWith('dev/chdb/'))).toBe(true);
    const installed = readdirSync(join(app, 'node_modules'));
    for (const testOnly of ['chdb', 'vitest', 'typescript', 'tsx', 'fast-check', 'kubernetes-models']) expect(installed, testOnly).not.toContain(testOnly);
    // Every package the lock marks dev-only is absent, however it got into the tree.
    const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const devOnly = Object.entries(lock.packages).filter(([path, entry]) => path.startsWith('node_modules/') && entry.dev);
    expect(devOnly.length).toBeGreaterThan(0);
    expect(devOnly.map(([path]) => path).filter((path) => existsSync(join(app, path)))).toEqual([]);
  });

  it('`chorus --help` and `chorus serve --help` exit 0 there, through the file /usr/local/bin/chorus links to', () => {
    const cli = join(app, 'bin/chorus.js');
    accessSync(cli, constants.X_OK);
    expect(readFileSync(cli, 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/);
    const help = inApp(['bin/chorus.js', '--help']);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('chorus serve');
    const serveHelp = inApp(['bin/chorus.js', 'serve', '--help']);
    expect(serveHelp.status, serveHelp.stderr).toBe(0);
    expect(serveHelp.stdout).toContain('--config');
  });

  it('loads what `serve` loads at start: the native SQLite module and the proto files', () => {
    const sqlite = inApp(['-e', "const Database = require('better-sqlite3'); process.stdout.write(String(new Database(':memory:').prepare('SELECT 41 + 1 AS n').get().n))"]);
    expect(sqlite.status, sqlite.stderr).toBe(0);
    expect(sqlite.stdout).toBe('42');
    const protos = inApp([
      '--input-type=module',
      '-e',
      "const { chorusV1 } = await import('./dist/gossip/proto.js'); process.stdout.write(Object.keys({ ...chorusV1('chorus/v1/admin.proto'), ...chorusV1('chorus/v1/gossip.proto') }).sort().join(','))",
    ]);
    expect(protos.status, protos.stderr).toBe(0);
    expect(protos.stdout.split(',')).toEqual(expect.arrayContaining(['Admin', 'Gossip']));
  });

  it('`serve` refuses a missing config file as configuration error (exit 2), not a crash', () => {
    const serve = inApp(['bin/chorus.js', 'serve'], { CHORUS_CONFIG: join(workDir, 'no-such-chorus.yaml') });
    expect(serve.status, serve.stderr).toBe(2);
    expect(serve.stderr).toContain('cannot read config file');
  });
});
