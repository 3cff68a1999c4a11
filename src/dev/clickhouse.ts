import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { httpOk, spawnDetached, waitFor } from './processes.js';

export const CLICKHOUSE_SERVER = '/usr/sbin/clickhouse-server';

export interface ClickHousePorts {
  http: number;
  tcp: number;
  interserver: number;
}

export const ping = (url: string) => httpOk(`${url}/ping`);

const escapeXml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A ClickHouse server config of our own: loopback only, its data under `dir`. */
export function clickhouseConfig(dir: string, ports: ClickHousePorts, opts: { zookeeper?: string; macros?: Record<string, string> } = {}): string {
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
<yandex>
  <logger><level>warning</level><log>${escapeXml(join(dir, 'clickhouse-server.log'))}</log><errorlog>${escapeXml(join(dir, 'clickhouse-server.err.log'))}</errorlog><size>100M</size><count>2</count></logger>
  <http_port>${ports.http}</http_port>
  <tcp_port>${ports.tcp}</tcp_port>
  <interserver_http_port>${ports.interserver}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <listen_host>127.0.0.1</listen_host>
  <path>${escapeXml(join(dir, 'data'))}/</path>
  <tmp_path>${escapeXml(join(dir, 'tmp'))}/</tmp_path>
  <user_files_path>${escapeXml(join(dir, 'user_files'))}/</user_files_path>
  <format_schema_path>${escapeXml(join(dir, 'format_schemas'))}/</format_schema_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
  ${zk}
  ${macros}
</yandex>
`;
}

export async function startClickHouse(dir: string, ports: ClickHousePorts, opts: { zookeeper?: string; macros?: Record<string, string> } = {}): Promise<number> {
  if (!existsSync(CLICKHOUSE_SERVER)) {
    throw new Error(`ClickHouse is not installed (${CLICKHOUSE_SERVER} missing): run \`bash scripts/setup.sh\` or apt-get install clickhouse-server`);
  }
  mkdirSync(dir, { recursive: true });
  const configFile = join(dir, 'config.xml');
  writeFileSync(configFile, clickhouseConfig(dir, ports, opts));
  const logFile = join(dir, 'stdout.log');
  const pid = spawnDetached(CLICKHOUSE_SERVER, [`--config-file=${configFile}`], { logFile, cwd: dir });
  await waitFor('ClickHouse', () => ping(`http://127.0.0.1:${ports.http}`), { timeoutMs: 60_000, pid, logFile: join(dir, 'clickhouse-server.err.log') });
  return pid;
}
