import * as grpc from '@grpc/grpc-js';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { certificateName } from './material.js';
import type { TlsWatcher } from './watcher.js';

type Provider = grpc.experimental.CertificateProvider;
type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/**
 * grpc-js's certificate provider fed by the replica's one TlsWatcher, so that gRPC and
 * interserver HTTPS switch to a rotated certificate together. Updates are delivered on the
 * next tick: grpc-js registers its own watcher only after adding the listener.
 */
export class WatcherCertificateProvider implements Provider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  constructor(private readonly watcher: TlsWatcher) {
    watcher.onChange(() => {
      for (const l of this.caListeners) this.sendCa(l);
      for (const l of this.identityListeners) this.sendIdentity(l);
    });
  }

  private sendCa(listener: CaListener): void {
    const { ca } = this.watcher.material;
    process.nextTick(() => listener({ caCertificate: ca }));
  }

  private sendIdentity(listener: IdentityListener): void {
    const { cert, key } = this.watcher.material;
    process.nextTick(() => listener({ certificate: cert, privateKey: key }));
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    this.sendCa(listener);
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    this.sendIdentity(listener);
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

/** The gRPC port's credentials: a client certificate signed by the CA is required at handshake. */
export function grpcServerCredentials(provider: WatcherCertificateProvider): grpc.ServerCredentials {
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true);
}

/**
 * Credentials to dial `expectedName` (a peer's replica name): the server's certificate must be
 * signed by the CA and name it (DNS SAN, or CN without SANs), whatever address it was dialed
 * at, so that one replica's certificate cannot stand in for another's. With `expectedName`
 * null (the CLI, dialing an address an operator chose) the CA's signature is enough.
 */
export function grpcChannelCredentials(provider: WatcherCertificateProvider, expectedName: string | null): grpc.ChannelCredentials {
  return grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
    checkServerIdentity: (_host: string, cert: PeerCertificate) => (expectedName === null ? undefined : checkServerIdentity(expectedName, cert)),
  });
}

/** The replica name the caller's verified client certificate proves; null without TLS. */
export function identifyCaller(call: { getAuthContext?: () => { sslPeerCertificate?: PeerCertificate } | null }): string | null {
  return certificateName(call.getAuthContext?.()?.sslPeerCertificate);
}
