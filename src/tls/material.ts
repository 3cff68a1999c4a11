import { readFileSync } from 'node:fs';
import { createSecureContext, type PeerCertificate } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { ChorusError } from '../core/errors.js';

/** Where a replica's (or the CLI's) CA, certificate and private key are, as PEM files. */
export interface TlsPaths {
  ca: string;
  cert: string;
  key: string;
}

/** The three files' contents, read together and checked to fit (the key is the certificate's). */
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The certificate's CN: the replica name it proves. */
  name: string;
}

/**
 * The TLS paths of a `tls` config section, or null when `insecure` is set. Without paths and
 * without `insecure` there is nothing to start with: peers could not be authenticated.
 */
export function tlsPathsOf(tls: { ca: string; cert: string; key: string; insecure: boolean }): TlsPaths | null {
  if (tls.insecure) return null;
  const missing = (['ca', 'cert', 'key'] as const).filter((k) => !tls[k]);
  if (missing.length > 0) {
    throw new ChorusError(
      'CONFIG_INVALID',
      `tls.${missing.join(', tls.')} not set: peers are authenticated by mutual TLS; give the CA, certificate and key files (CHORUS_TLS_CA, CHORUS_TLS_CERT, CHORUS_TLS_KEY), or set tls.insecure to run without`,
    );
  }
  return { ca: tls.ca, cert: tls.cert, key: tls.key };
}

/** Reads and checks the three files; CONFIG_INVALID names the file or the mismatch. */
export function readTlsMaterial(paths: TlsPaths): TlsMaterial {
  const read = (what: keyof TlsPaths) => {
    try {
      return readFileSync(paths[what]);
    } catch (err) {
      throw new ChorusError('CONFIG_INVALID', `cannot read tls.${what} ${paths[what]}: ${(err as Error).message}`);
    }
  };
  const material = { ca: read('ca'), cert: read('cert'), key: read('key') };
  let name: string;
  try {
    // Throws when the key is not the certificate's, or a file is not PEM: a half-rotated set.
    createSecureContext(material);
    name = commonNameOf(new X509Certificate(material.cert).subject);
  } catch (err) {
    throw new ChorusError('CONFIG_INVALID', `tls files ${paths.cert}, ${paths.key}, ${paths.ca} do not fit together: ${(err as Error).message}`);
  }
  return { ...material, name };
}

export function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  return a.ca.equals(b.ca) && a.cert.equals(b.cert) && a.key.equals(b.key);
}

/** CN of an X509Certificate's `subject` string ("CN=r1\nO=..."). */
function commonNameOf(subject: string): string {
  return /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1] ?? '';
}

/** The name a verified peer certificate proves: its CN, or null when it has none. */
export function certificateName(cert: PeerCertificate | undefined | null): string | null {
  const cn = cert?.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return name ? name : null;
}
