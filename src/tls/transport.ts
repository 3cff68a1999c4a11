import type * as grpc from '@grpc/grpc-js';
import type https from 'node:https';
import type { Server as TlsServer } from 'node:tls';
import type { Logger } from '../core/logger.js';
import { grpcChannelCredentials, grpcServerCredentials, identifyCaller, WatcherCertificateProvider } from './grpc.js';
import { httpsServerOptions, InterserverClient, reloadOnChange } from './https.js';
import { tlsPathsOf } from './material.js';
import { TlsWatcher } from './watcher.js';
import { credentials, ServerCredentials } from '@grpc/grpc-js';

export interface TlsSettings {
  ca: string;
  cert: string;
  key: string;
  insecure: boolean;
  reloadIntervalMs: number;
}

/**
 * How this process talks to Chorus peers: mutual TLS from the `tls` files (reloaded when they
 * change), or plaintext when `tls.insecure` is set. The sidecar, its peer clients and the CLI
 * all take their credentials from here.
 */
export class PeerTransport {
  private readonly provider: WatcherCertificateProvider | null;

  private constructor(readonly watcher: TlsWatcher | null) {
    this.provider = watcher ? new WatcherCertificateProvider(watcher) : null;
  }

  /** Throws CONFIG_INVALID when TLS files are missing, unreadable or do not fit, unless insecure. */
  static fromSettings(tls: TlsSettings, logger: Logger): PeerTransport {
    const paths = tlsPathsOf(tls);
    return new PeerTransport(paths ? new TlsWatcher(paths, tls.reloadIntervalMs, logger) : null);
  }

  get secure(): boolean {
    return this.watcher !== null;
  }

  /** Starts watching the files for rotation. */
  start(): void {
    this.watcher?.start();
  }

  stop(): void {
    this.watcher?.stop();
  }

  grpcServerCredentials(): grpc.ServerCredentials {
    return this.provider ? grpcServerCredentials(this.provider) : ServerCredentials.createInsecure();
  }

  /** To dial the peer named `expectedName`; null accepts any CA-signed server (the CLI). */
  grpcChannelCredentials(expectedName: string | null): grpc.ChannelCredentials {
    return this.provider ? grpcChannelCredentials(this.provider, expectedName) : credentials.createInsecure();
  }

  /**
   * Channel options to go with those credentials: the TLS server name (SNI) is the peer's name
   * rather than the address dialed (an IP address is not a valid server name).
   */
  grpcChannelOptions(expectedName: string | null): grpc.ChannelOptions {
    return this.provider ? { 'grpc.ssl_target_name_override': expectedName ?? 'chorus' } : {};
  }

  /** The replica name the caller's certificate proves; null when plaintext. */
  /**
   * The caller's proven name; '' for a certificate the CA signed that names nobody (no CN): it is
   * authenticated but proves no member, so nothing it claims is taken. Null in plaintext.
   */
  readonly identify = (call: object): string | null => (this.secure ? (identifyCaller(call) ?? '') : null);

  interserverClient(peer: { name: string; interserver: string }): InterserverClient {
    return new InterserverClient(peer.name, peer.interserver, this.watcher);
  }

  /** Fastify's `https` option for the interserver server; undefined when plaintext. */
  httpsServerOptions(): https.ServerOptions | undefined {
    return this.watcher ? httpsServerOptions(this.watcher.material) : undefined;
  }

  /** Keeps an HTTPS server on the current certificate. */
  reloadServer(server: unknown): void {
    if (this.watcher) reloadOnChange(server as TlsServer, this.watcher);
  }
}
