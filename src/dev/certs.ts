import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** PEM files a sidecar or a client presents: the CA to trust, its certificate and key. */
export interface TlsFiles {
  ca: string;
  cert: string;
  key: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * A throwaway CA in `dir` (ca.crt, ca.key) for a dev cluster or a test: EC P-256, valid 30
 * days, made with the openssl command line.
 */
export function createDevCa(dir: string, name = 'chorus-dev-ca'): string {
  mkdirSync(dir, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '30', '-subj', `/CN=${name}`], dir);
  return join(dir, 'ca.crt');
}

/**
 * A certificate for `name` signed by the CA in `caDir`: CN and DNS SAN = name (what peers check),
 * plus localhost and 127.0.0.1 so that tools dialing a loopback address accept it too. Written
 * to `outDir`/`file`.crt and .key (over any previous pair: a rotation).
 */
export function issueDevCertificate(caDir: string, name: string, outDir = caDir, file = name): TlsFiles {
  mkdirSync(outDir, { recursive: true });
  const tag = randomBytes(4).toString('hex');
  const csr = join(outDir, `${file}.${tag}.csr`);
  const ext = join(outDir, `${file}.${tag}.ext`);
  const key = join(outDir, `${file}.${tag}.key.new`);
  const cert = join(outDir, `${file}.${tag}.crt.new`);
  try {
    writeFileSync(ext, `subjectAltName=DNS:${name},DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n`);
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], outDir);
    openssl(['x509', '-req', '-in', csr, '-CA', join(caDir, 'ca.crt'), '-CAkey', join(caDir, 'ca.key'), '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-out', cert, '-days', '30', '-extfile', ext], outDir);
    const files = { ca: join(caDir, 'ca.crt'), cert: join(outDir, `${file}.crt`), key: join(outDir, `${file}.key`) };
    // Renamed into place: a reader sees the old file or the new one, never half of one.
    renameSync(key, files.key);
    renameSync(cert, files.cert);
    return files;
  } finally {
    for (const f of [csr, ext, key, cert]) rmSync(f, { force: true });
  }
}
