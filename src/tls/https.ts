import http from 'node:http';
import https from 'node:https';
import { checkServerIdentity, type Server as TlsServer } from 'node:tls';
import { ChorusError } from '../core/errors.js';
import type { TlsMaterial } from './material.js';
import type { TlsWatcher } from './watcher.js';

/** Options of the interserver HTTPS server: a client certificate signed by the CA is required. */
export function httpsServerOptions(material: TlsMaterial): https.ServerOptions {
  return { ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: true };
}

/** Swaps the server's certificate and CA for every new set; connections already open keep theirs. */
export function reloadOnChange(server: TlsServer, watcher: TlsWatcher): () => void {
  return watcher.onChange((m) => server.setSecureContext({ ca: m.ca, cert: m.cert, key: m.key }));
}

/** The largest answer read whole: a snapshot manifest of a very large shard stays far below it. */
const MAX_TEXT_BYTES = 256 * 1024 * 1024;

export interface InterserverResponse {
  status: number;
  body: string;
}

/**
 * Requests to one peer's interserver port. Over TLS the client presents this replica's
 * certificate and accepts only a server certificate signed by the CA that names the peer; on
 * rotation a new agent takes over (an agent's sockets keep the certificate they opened with).
 */
export class InterserverClient {
  readonly base: string;
  private agent: http.Agent;

  constructor(
    readonly peerName: string,
    base: string,
    private readonly watcher: TlsWatcher | null,
  ) {
    this.base = base.replace(/\/$/, '');
    const scheme = new URL(this.base).protocol;
    if (scheme !== (watcher ? 'https:' : 'http:')) {
      throw new ChorusError('CONFIG_INVALID', `peer ${peerName}: interserver ${base} must be an ${watcher ? 'https' : 'http'} URL${watcher ? '' : ' (tls.insecure is set)'}`);
    }
    this.agent = this.newAgent();
    watcher?.onChange(() => {
      const old = this.agent;
      this.agent = this.newAgent();
      // Transfers still running on the old agent finish; its idle sockets go later.
      setTimeout(() => old.destroy(), 10 * 60_000).unref();
    });
  }

  private newAgent(): http.Agent {
    if (!this.watcher) return new http.Agent({ keepAlive: true, maxSockets: 16 });
    const { ca, cert, key } = this.watcher.material;
    return new https.Agent({ keepAlive: true, maxSockets: 16, ca, cert, key, servername: this.peerName, checkServerIdentity: (_host, peerCert) => checkServerIdentity(this.peerName, peerCert) });
  }

  /** The response of `path` (under the peer's base URL); its body is the caller's to read. */
  request(path: string, opts: { method?: string; timeoutMs: number }): Promise<http.IncomingMessage> {
    const url = this.base + path;
    const module = this.watcher ? https : http;
    return new Promise((resolve, reject) => {
      const req = module.request(url, { method: opts.method ?? 'GET', agent: this.agent, timeout: opts.timeoutMs }, resolve);
      req.on('timeout', () => req.destroy(new ChorusError('PEER_UNAVAILABLE', `${opts.method ?? 'GET'} ${url} timed out`)));
      req.on('error', (err) => reject(err instanceof ChorusError ? err : new ChorusError('PEER_UNAVAILABLE', `${opts.method ?? 'GET'} ${url}: ${err.message}`, err)));
      req.end();
    });
  }

  /**
   * The whole response as text; for small answers (digests, manifests), never for part files.
   * A peer's answer longer than `maxBytes` is refused rather than held in memory.
   */
  async text(path: string, opts: { method?: string; timeoutMs: number; maxBytes?: number }): Promise<InterserverResponse> {
    const res = await this.request(path, opts);
    const max = opts.maxBytes ?? MAX_TEXT_BYTES;
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of res) {
      length += (chunk as Buffer).length;
      if (length > max) {
        res.destroy();
        throw new ChorusError('PEER_UNAVAILABLE', `${this.base}${path}: the answer exceeds ${max} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
    return { status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') };
  }

  close(): void {
    this.agent.destroy();
  }
}
