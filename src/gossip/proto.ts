import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

/** proto/ sits at the package root, two levels above both src/gossip and dist/gossip. */
export const PROTO_DIR = fileURLToPath(new URL('../../proto/', import.meta.url));

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  includeDirs: [PROTO_DIR],
};

export function loadPackage(file: string): grpc.GrpcObject {
  const definition = protoLoader.loadSync(file, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition);
}

export function chorusV1(file: string): Record<string, grpc.ServiceClientConstructor> {
  const pkg = loadPackage(file) as unknown as { chorus: { v1: Record<string, grpc.ServiceClientConstructor> } };
  return pkg.chorus.v1;
}
