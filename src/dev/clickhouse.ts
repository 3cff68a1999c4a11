import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { httpOk, spawnDetached, waitFor } from './processes.js';

/**
 * What plays ClickHouse in a dev cluster: `server`, a clickhouse-server binary (Debian's 18.16
 * by default; CHORUS_DEV_CLICKHOUSE_SERVER names another), or `chdb`, ClickHouse 26.7's engine from
 * the npm package chdb behind an HTTP front of our own (src/dev/chdb), one process per replica.
 */
export type ClickHouseBackend = 'server' | 'chdb';
export const CLICKHOUSE_BACKENDS: readonly ClickHouseBackend[] = ['server', 'chdb'];

export function isClickHouseBackend(value: string | undefined): value is ClickHouseBackend {
  return (CLICKHOUSE_BACKENDS as readonly (string | undefined)[]).includes(value);
}

export function clickhouseServerBinary(): string {
  return process.env.CHORUS_DEV_CLICKHOUSE_SERVER ?? '/usr/sbin/clickhouse-server';
}

// From the build, also when this module runs from src/ (under vitest).
const CHDB_FRONT_ENTRY = join(fileURLToPath(new URL('../../', import.meta.url)), 'dist', 'dev', 'chdb', 'main.js');

/** The config root element: `<yandex>` up to 21.x, `<clickhouse>` from 22 (which still reads the old one, but warns). */
function configRoot(binary: string): string {
  try {
    const major = Number(/version (\d+)\./i.exec(execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] }))?.[1] ?? 0);
    return major >= 22 ? 'clickhouse' : 'yandex';
  } catch {
    return 'yandex';
  }
}

export interface ClickHousePorts {
  http: number;
  tcp: number;
  interserver: number;
}

export const ping = (url: string) => httpOk(`${url}/ping`);

const escapeXml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * Where a replica's processes run: on this machine's loopback (the default), or in a network
 * namespace of the chaos suite, reachable from the host at `address`.
 */
export interface Placement {
  address: string;
  netns?: string;
}

export const LOOPBACK: Placement = { address: '127.0.0.1' };

/**
 * What a server in the placement listens on: in a namespace every address it has (its loopback,
 * for its own sidecar, and its veth, for the host), which are only that namespace's.
 */
export const listenHost = (placement: Placement) => (placement.netns ? '0.0.0.0' : placement.address);

/** A ClickHouse server config of our own: loopback only (or its namespace), its data under `dir`. */
export function clickhouseConfig(
  dir: string,
  ports: ClickHousePorts,
  opts: { zookeeper?: string; macros?: Record<string, string>; root?: string; placement?: Placement; queryLog?: boolean } = {},
): string {
  const root = opts.root ?? 'yandex';
  const placement = opts.placement ?? LOOPBACK;
  const zk = opts.zookeeper
    ? `<zookeeper>${opts.zookeeper
        .split(',')
        .map((hp) => {
          const [host, port] = hp.split(':');
          return `<node><host>${escapeXml(host!)}</host><port>${port}</port></node>`;
        })
        .join('')}</zookeeper>`
    : '';
  const macros = opts.macros
    ? `<macros>${Object.entries(opts.macros)
        .map(([k, v]) => `<${k}>${escapeXml(v)}</${k}>`)
        .join('')}</macros>`
    : '';
  return `<?xml version="1.0"?>
<${root}>
  <logger><level>warning</level><log>${escapeXml(join(dir, 'clickhouse-server.log'))}</log><errorlog>${escapeXml(join(dir, 'clickhouse-server.err.log'))}</errorlog><size>100M</size><count>2</count></logger>
  <http_port>${ports.http}</http_port>
  <tcp_port>${ports.tcp}</tcp_port>
  <interserver_http_port>${ports.interserver}</interserver_http_port>
  <interserver_http_host>${escapeXml(placement.address)}</interserver_http_host>
  <listen_host>${escapeXml(listenHost(placement))}</listen_host>
  <path>${escapeXml(join(dir, 'data'))}/</path>
  <tmp_path>${escapeXml(join(dir, 'tmp'))}/</tmp_path>
  <user_files_path>${escapeXml(join(dir, 'user_files'))}/</user_files_path>
  <format_schema_path>${escapeXml(join(dir, 'format_schemas'))}/</format_schema_path>
  <users_config>${escapeXml(join(dir, 'users.xml'))}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
  ${opts.queryLog ? '<query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>7500</flush_interval_milliseconds></query_log>' : ''}
  ${zk}
  ${macros}
</${root}>
`;
}

/**
 * Users of a dev ClickHouse server, so that tests can act as clients with their own rights:
 * `default` (no password, every right, what Chorus itself uses), `writer` (a password, every
 * right), `reader` (a password, the readonly profile: reads only) and `stranger` (a password,
 * no database but `system`). The chdb backend has no users (see src/dev/chdb/front.ts).
 */
export const DEV_USERS = {
  writer: 'writer-secret',
  reader: 'reader-secret',
  stranger: 'stranger-secret',
} as const;

export function clickhouseUsersConfig(root = 'yandex', placement: Placement = LOOPBACK, opts: { queryLog?: boolean } = {}): string {
  // In a namespace, the host reaches the server from the namespace's /24 (the chaos bridge).
  const networks = ['::1', '127.0.0.1', ...(placement.netns ? [placement.address.replace(/\.\d+$/, '.0/24')] : [])];
  const user = (name: string, password: string, profile: string, extra = '') =>
    `<${name}><password>${escapeXml(password)}</password><networks>${networks.map((ip) => `<ip>${escapeXml(ip)}</ip>`).join('')}</networks><profile>${profile}</profile><quota>default</quota>${extra}</${name}>`;
  return `<?xml version="1.0"?>
<${root}>
  <profiles>
    <default><max_memory_usage>10000000000</max_memory_usage>${opts.queryLog ? '<log_queries>1</log_queries>' : ''}</default>
    <readonly><readonly>1</readonly></readonly>
  </profiles>
  <users>
    ${user('default', '', 'default')}
    ${user('writer', DEV_USERS.writer, 'default')}
    ${user('reader', DEV_USERS.reader, 'readonly')}
    ${user('stranger', DEV_USERS.stranger, 'default', '<allow_databases><database>system</database></allow_databases>')}
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</${root}>
`;
}

/**
 * Starts one replica's ClickHouse of the given backend, its data under `dir/data`, in its
 * placement; resolves with its pid once it answers /ping at the placement's address.
 */
export async function startClickHouse(
  backend: ClickHouseBackend,
  dir: string,
  ports: ClickHousePorts,
  /** queryLog: every query of every user in system.query_log (profiling; costs the server a little). */
  opts: { zookeeper?: string; macros?: Record<string, string>; placement?: Placement; queryLog?: boolean } = {},
): Promise<number> {
  mkdirSync(dir, { recursive: true });
  const logFile = join(dir, 'stdout.log');
  const placement = opts.placement ?? LOOPBACK;
  const url = `http://${placement.address}:${ports.http}`;
  if (backend === 'chdb') {
    if (opts.zookeeper) throw new Error('the chdb backend has no ZooKeeper client: ReplicatedMergeTree baselines need --clickhouse server');
    const args = [CHDB_FRONT_ENTRY, '--data', join(dir, 'data'), '--port', String(ports.http), '--host', listenHost(placement)];
    const pid = spawnDetached(process.execPath, args, { logFile, cwd: dir, netns: placement.netns });
    await waitFor('ClickHouse (chdb)', () => ping(url), { timeoutMs: 60_000, pid, logFile });
    return pid;
  }
  const binary = clickhouseServerBinary();
  if (!existsSync(binary)) {
    throw new Error(`ClickHouse is not installed (${binary} missing): run \`bash scripts/setup.sh\` or apt-get install clickhouse-server`);
  }
  const configFile = join(dir, 'config.xml');
  const root = configRoot(binary);
  writeFileSync(join(dir, 'users.xml'), clickhouseUsersConfig(root, placement, { queryLog: opts.queryLog }));
  writeFileSync(configFile, clickhouseConfig(dir, ports, { ...opts, root, placement }));
  const pid = spawnDetached(binary, [`--config-file=${configFile}`], { logFile, cwd: dir, netns: placement.netns });
  await waitFor('ClickHouse', () => ping(url), { timeoutMs: 60_000, pid, logFile: join(dir, 'clickhouse-server.err.log') });
  return pid;
}
