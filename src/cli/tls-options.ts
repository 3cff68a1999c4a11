import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { silentLogger } from '../core/logger.js';
import { PeerTransport, type TlsSettings } from '../tls/transport.js';
import { UsageError } from './admin-commands.js';

/** The CLI's options that say how it reaches the gRPC port (shared by every admin command). */
export const TLS_OPTIONS = {
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  insecure: { type: 'boolean' },
  config: { type: 'string' },
  dir: { type: 'string' },
} as const;

export interface TlsOptionValues {
  'tls-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  insecure?: boolean;
  config?: string;
  dir?: string;
}

type Paths = Pick<TlsSettings, 'ca' | 'cert' | 'key'>;

/**
 * The Admin API shares the gRPC port, which requires a client certificate signed by the
 * shard's CA. The CLI takes it from, first found:
 *   1. --insecure or CHORUS_TLS_INSECURE=true (a shard running with tls.insecure);
 *   2. --tls-ca/--tls-cert/--tls-key;
 *   3. CHORUS_TLS_CA/CHORUS_TLS_CERT/CHORUS_TLS_KEY (what a sidecar container configured by
 *      environment has, so `kubectl exec POD -c chorus -- chorus status` works as is);
 *   4. the `tls` section of --config FILE or CHORUS_CONFIG (the sidecar's own config file);
 *   5. the dev cluster of --dir DIR or CHORUS_DEV_DIR (its CLI certificate).
 * The server's certificate must be signed by the CA; its name is not checked, since an
 * operator dials an address (localhost inside a pod) rather than a replica name.
 */
export function cliTransport(values: TlsOptionValues, env: NodeJS.ProcessEnv = process.env): PeerTransport {
  const settings = (paths: Paths | null): TlsSettings => ({ ca: '', cert: '', key: '', ...paths, insecure: paths === null, reloadIntervalMs: 60_000 });
  const open = (paths: Paths | null) => PeerTransport.fromSettings(settings(paths), silentLogger());
  if (values.insecure || /^(1|true|yes)$/i.test(env.CHORUS_TLS_INSECURE ?? '')) return open(null);
  const flags = [values['tls-ca'], values['tls-cert'], values['tls-key']];
  if (flags.some((f) => f !== undefined)) {
    if (!flags.every((f) => f)) throw new UsageError('--tls-ca, --tls-cert and --tls-key go together');
    return open({ ca: flags[0]!, cert: flags[1]!, key: flags[2]! });
  }
  if (env.CHORUS_TLS_CA && env.CHORUS_TLS_CERT && env.CHORUS_TLS_KEY) return open({ ca: env.CHORUS_TLS_CA, cert: env.CHORUS_TLS_CERT, key: env.CHORUS_TLS_KEY });
  const configFile = values.config ?? env.CHORUS_CONFIG;
  if (configFile) {
    const tls = ((parseYaml(readFileSync(configFile, 'utf8')) as { tls?: Partial<TlsSettings> } | null)?.tls ?? {}) as Partial<TlsSettings>;
    if (tls.insecure) return open(null);
    if (tls.ca && tls.cert && tls.key) return open({ ca: tls.ca, cert: tls.cert, key: tls.key });
  }
  const devDir = values.dir ?? env.CHORUS_DEV_DIR;
  if (devDir) {
    const tls = devClusterTls(devDir);
    if (tls) return open(tls.insecure ? null : tls.cli);
  }
  throw new UsageError(
    'the gRPC port needs a client certificate: give --tls-ca/--tls-cert/--tls-key (or CHORUS_TLS_CA/CERT/KEY), --config FILE, --dir DEVDIR, or --insecure for a shard running with tls.insecure',
  );
}

/** A dev cluster's TLS record in its cluster.json (see src/dev/cluster.ts), if there is one. */
function devClusterTls(dir: string): { insecure: boolean; cli: Paths } | undefined {
  const file = join(resolve(dir), 'cluster.json');
  if (!existsSync(file)) throw new UsageError(`no dev cluster in ${dir} (${file} missing)`);
  return (JSON.parse(readFileSync(file, 'utf8')) as { tls?: { insecure: boolean; cli: Paths } }).tls;
}
