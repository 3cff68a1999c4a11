import * as grpc from '@grpc/grpc-js';
import { ChorusError } from '../core/errors.js';
import { chorusV1 } from '../gossip/proto.js';
import type { PeerTransport } from '../tls/transport.js';

type Unary = (req: unknown, metadata: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => void;

/** A client of one replica's Admin service; errors come back as ChorusErrors with the server's code. */
export class AdminClient {
  private client: grpc.Client & Record<string, Unary>;

  constructor(
    readonly address: string,
    private readonly token: string,
    /** From cliTransport (src/cli/tls-options.ts): the port requires a client certificate. */
    transport: PeerTransport,
    private readonly timeoutMs = 5000,
  ) {
    const Admin = chorusV1('chorus/v1/admin.proto').Admin!;
    this.client = new Admin(address, transport.grpcChannelCredentials(null), transport.grpcChannelOptions(null)) as unknown as grpc.Client & Record<string, Unary>;
  }

  call<T>(method: string, req: unknown = {}, timeoutMs = this.timeoutMs): Promise<T> {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return new Promise((resolve, reject) => {
      this.client[method]!(req, metadata, { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (!err) return resolve(res as T);
        const code = String(err.metadata?.get('chorus-error-code')[0] ?? '');
        const chorusCode = code.startsWith('CHORUS_') ? code.slice(7) : err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED ? 'PEER_UNAVAILABLE' : err.code === grpc.status.UNAUTHENTICATED ? 'UNAUTHENTICATED' : 'INTERNAL';
        reject(Object.assign(new ChorusError(chorusCode as never, `${this.address}: ${err.details || err.message}`), { grpcCode: err.code }));
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
