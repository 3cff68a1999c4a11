import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/config.js';
import { ChorusError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { createDevCa, issueDevCertificate } from '../dev/certs.js';
import { devDown, devKill, devStart, devUp, devWipe, type Component } from '../dev/cluster.js';
import { Sidecar } from '../sidecar/sidecar.js';
import { clickhouseBackendOption, runDemo } from './demo.js';
import { runAdminCommand, UsageError } from './admin-commands.js';

const USAGE = `chorus: replication coordinator sidecar for ClickHouse

Usage:
  chorus serve [--config FILE]                  run the sidecar (config also from CHORUS_* env)
  chorus dev up --replicas N --dir DIR [--clickhouse server|chdb] [--insecure] [--json]
                                                start ZooKeeper, N ClickHouse (Debian's server, or
                                                ClickHouse 26 from chdb) and N sidecars
  chorus dev down --dir DIR                     stop everything dev up started in DIR
  chorus dev kill NAME --dir DIR [--component sidecar|clickhouse|zookeeper] [--signal KILL|TERM|STOP|CONT]
  chorus dev start NAME --dir DIR [--component sidecar|clickhouse|zookeeper|all]
  chorus dev wipe NAME --dir DIR                stop a replica and empty its ClickHouse data and Chorus state
  chorus dev certs --dir DIR NAME...            a dev CA in DIR (ca.crt, ca.key; an existing one is reused) and,
                                                per NAME, NAME.crt and NAME.key signed by it (CN and DNS SAN = NAME)
  chorus demo [--dir DIR] [--clickhouse server|chdb]
                                                dev up 3 replicas, insert, show the result, serve until Ctrl-C

Operating a running shard (gRPC Admin API; --grpc or CHORUS_GRPC, --token or CHORUS_ADMIN_TOKEN):
  chorus status --grpc HOST:PORT [--json]       every member: state, applied LSN, lag, part store, ready
  chorus entries | entry LSN | resync | clone --from R | decommission R | pause | resume
  chorus COMMAND --help                         details of one command
  The gRPC port requires a client certificate signed by the shard's CA: --tls-ca/--tls-cert/--tls-key
  (or CHORUS_TLS_CA/CERT/KEY), or the tls section of --config FILE (CHORUS_CONFIG), or a dev
  cluster's with --dir DIR (CHORUS_DEV_DIR); --insecure for a shard running with tls.insecure.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration, 3 (status) the shard is degraded.
`;

async function serve(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' }, help: { type: 'boolean' } } });
  // Hard stop, should a graceful shutdown hang past its grace period.
  const forceExit = (graceMs: number) => setTimeout(() => process.exit(1), graceMs + 5000).unref();
  if (values.help) return void process.stdout.write('chorus serve [--config FILE]\n');
  const config = loadConfig({ file: values.config ?? process.env.CHORUS_CONFIG });
  const logger = createLogger({ level: config.logLevel, replica: config.replica, shard: config.shard });
  const sidecar = new Sidecar(config, logger);
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    forceExit(config.shutdownGraceMs);
    logger.info({ signal }, 'shutting down');
    sidecar.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  try {
    await sidecar.start();
  } catch (err) {
    const e = ChorusError.from(err);
    logger.fatal({ code: e.qualifiedCode, err: e.message }, 'start failed');
    await sidecar.stop().catch(() => undefined);
    throw e;
  }
}

async function dev(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      replicas: { type: 'string', default: '3' },
      dir: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean' },
      component: { type: 'string' },
      signal: { type: 'string', default: 'KILL' },
      clickhouse: { type: 'string', default: 'server' },
      insecure: { type: 'boolean' },
    },
  });
  if (values.help || !sub) return void process.stdout.write(USAGE);
  if (!values.dir) throw new UsageError('--dir DIR is required');
  if (sub === 'up') {
    const replicas = Number(values.replicas);
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > 9) throw new UsageError('--replicas must be an integer from 1 to 9');
    const info = await devUp({ replicas, dir: values.dir, clickhouse: clickhouseBackendOption(values.clickhouse), insecure: values.insecure ?? false });
    if (values.json) {
      process.stdout.write(
        JSON.stringify({
          zookeeper: info.zookeeper,
          clickhouseBackend: info.clickhouseBackend,
          adminToken: info.adminToken,
          tls: info.tls,
          replicas: info.replicas.map((r) => ({ name: r.name, http: r.http, clickhouse: r.clickhouse, grpc: r.grpc, interserver: r.interserver, pids: r.pids })),
        }) + '\n',
      );
    } else {
      process.stdout.write(`ZooKeeper ${info.zookeeper}; admin token ${info.adminToken} (export CHORUS_ADMIN_TOKEN=${info.adminToken})\n`);
      process.stdout.write(
        info.tls.insecure
          ? 'gRPC and interserver ports are plaintext (--insecure): the CLI needs --insecure too\n'
          : `gRPC and interserver ports: mutual TLS, CA and certificates in ${info.tls.dir} (the CLI finds its own with --dir ${info.dir} or CHORUS_DEV_DIR)\n`,
      );
      for (const r of info.replicas) process.stdout.write(`${r.name}: chorus ${r.http}  clickhouse ${r.clickhouse}  grpc ${r.grpc}\n`);
    }
    return;
  }
  if (sub === 'down') {
    await devDown(values.dir);
    return;
  }
  if (sub === 'certs') {
    devCerts(values.dir, positionals);
    return;
  }
  if (sub === 'kill' || sub === 'start' || sub === 'wipe') {
    const name = positionals[0];
    if (!name) throw new UsageError(`chorus dev ${sub} needs a replica name (r1, r2, ...)`);
    const components = sub === 'start' ? ['sidecar', 'clickhouse', 'zookeeper', 'all'] : ['sidecar', 'clickhouse', 'zookeeper'];
    const component = values.component ?? (sub === 'start' ? 'all' : 'sidecar');
    if (!components.includes(component)) throw new UsageError(`--component must be one of ${components.join(', ')}`);
    if (sub === 'kill') {
      if (!['KILL', 'TERM', 'STOP', 'CONT'].includes(values.signal!)) throw new UsageError('--signal must be KILL, TERM, STOP or CONT');
      await devKill(values.dir, name, component as Component, values.signal as 'KILL');
    } else if (sub === 'start') await devStart(values.dir, name, component as Component | 'all');
    else await devWipe(values.dir, name);
    return;
  }
  throw new UsageError(`unknown dev command ${sub}`);
}

// A NAME becomes a file name in DIR and a certificate's CN and DNS SAN (pod names, replica names).
const CERTIFICATE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Certificates for a shard whose CA lives in files, not in a dev cluster: what Kubernetes
 * Secrets are made from (k8s/overlays/kind/make-secrets.sh). The CA is reused so that
 * certificates issued in several runs trust each other.
 */
function devCerts(dir: string, names: string[]): void {
  if (names.length === 0) throw new UsageError('chorus dev certs needs at least one NAME (the CN and DNS name of a certificate)');
  for (const name of names) {
    if (!CERTIFICATE_NAME.test(name)) throw new UsageError(`certificate name ${JSON.stringify(name)}: letters, digits, '.', '-' and '_' only, starting with a letter or digit`);
    // ca.crt and ca.key are the CA's own files: issuing "ca" would overwrite them.
    if (name === 'ca') throw new UsageError('certificate name "ca" is taken by the CA (ca.crt, ca.key)');
  }
  const caFiles = [join(dir, 'ca.crt'), join(dir, 'ca.key')];
  const present = caFiles.filter((f) => existsSync(f));
  if (present.length === 1) throw new ChorusError('CONFIG_INVALID', `${present[0]} exists without its pair (${caFiles.find((f) => !present.includes(f))}): remove it or restore the other file`);
  if (present.length === 0) {
    createDevCa(dir);
    process.stdout.write(`created CA ${caFiles[0]}\n`);
  } else process.stdout.write(`reused CA ${caFiles[0]}\n`);
  for (const name of names) {
    const files = issueDevCertificate(dir, name);
    process.stdout.write(`issued ${files.cert} ${files.key}\n`);
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  switch (command) {
    case 'serve':
      return serve(args);
    case 'dev':
      return dev(args);
    case 'demo':
      return runDemo(args);
    case 'status':
    case 'entries':
    case 'entry':
    case 'resync':
    case 'clone':
    case 'decommission':
    case 'pause':
    case 'resume': {
      const code = await runAdminCommand(command, args, (s) => process.stdout.write(s));
      // Exits rather than waiting for the event loop to drain: a TLS handshake with a member
      // that is stopped (SIGSTOP, a frozen VM) outlives the closed gRPC client that began it.
      process.stdout.write('', () => process.exit(code));
      return;
    }
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command ${command}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError || (err instanceof ChorusError && err.code === 'CONFIG_INVALID')) {
    process.stderr.write(`chorus: ${err.message}\n`);
    if (err instanceof UsageError) process.stderr.write(USAGE);
    process.exit(2);
  }
  const e = err instanceof Error ? err : new Error(String(err));
  process.stderr.write(`chorus: ${e instanceof ChorusError ? `${e.qualifiedCode}: ` : ''}${e.message}\n`);
  process.exit(1);
});
