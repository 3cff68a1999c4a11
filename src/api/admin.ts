import * as grpc from '@grpc/grpc-js';
import { timingSafeEqual } from 'node:crypto';
import { ChorusError } from '../core/errors.js';
import { toGrpcError } from '../gossip/gossip.js';
import { chorusV1 } from '../gossip/proto.js';
import type { EntryState, LogEntry } from '../log/entry.js';
import type { CloneProgress } from '../replication/clone.js';
import type { LeaseStatus } from '../allocator/lease.js';
import type { LeaseDuplicate } from '../log/store.js';

export interface AdminStatus {
  replica: string;
  shard: string;
  cluster: string;
  version: string;
  clickhouseReachable: boolean;
  clickhouseVersion: string;
  zookeeperSession: string;
  maxLsn: number;
  appliedWatermark: number;
  lag: { entries: number; bytes: number; seconds: number };
  fetchesInFlight: number;
  partStoreBytes: number;
  members: Array<{ name: string; state: string; incarnation: number; appliedWatermark: number; maxLsn: number; grpc: string }>;
  ready: boolean;
  notReadyReasons: string[];
  paused: boolean;
  /** What refuses inserts here now (backpressure): apply lag, tables with too many parts. */
  backpressure: string[];
  allocatingMember: string;
  clone: CloneProgress;
  /** Conditions an operator must look into (two different entries for one LSN), newest first. */
  alarms: string[];
  lease: LeaseStatus;
  leaseDuplicates: Array<Omit<LeaseDuplicate, 'at'>>;
  /** Entries not applied here whose last try failed (each is retried), oldest first. */
  failing: FailingEntry[];
}

export interface FailingEntry {
  lsn: number;
  kind: string;
  /** "db.t", or the database of a database's own CREATE / DROP. */
  table: string;
  attempts: number;
  error: string;
}

export interface EntryInfo {
  entry: LogEntry;
  state: EntryState;
  attempts: number;
  lastError: string;
}

/** What the Admin service needs of a sidecar. */
export interface AdminBackend {
  status(): Promise<AdminStatus>;
  listEntries(q: { fromLsn: number; toLsn: number; table: string; state: string; limit: number }): EntryInfo[];
  getEntry(lsn: number): EntryInfo | undefined;
  resync(q: { fromLsn: number; toLsn: number; table: string }): Promise<number>;
  clone(from: string): Promise<CloneProgress>;
  decommission(replica: string): Promise<number[]>;
  setPaused(paused: boolean): boolean;
}

/**
 * The gRPC Admin service. Every call is checked against the configured bearer token first
 * (constant-time compare); an empty token means the admin port is open, which the README
 * warns against outside a laptop.
 */
export function registerAdmin(server: grpc.Server, backend: AdminBackend, token: string): void {
  const Admin = chorusV1('chorus/v1/admin.proto').Admin!;
  const expected = Buffer.from(`Bearer ${token}`);
  const authorised = (metadata: grpc.Metadata) => {
    if (!token) return true;
    const given = Buffer.from(String(metadata.get('authorization')[0] ?? ''));
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
  const unary =
    <Req, Res>(fn: (req: Req) => Promise<Res> | Res) =>
    (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      if (!authorised(call.metadata)) {
        cb(toGrpcError(new ChorusError('UNAUTHENTICATED', 'missing or wrong bearer token (metadata "authorization: Bearer <token>")')));
        return;
      }
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (res) => cb(null, res),
          (err: unknown) => cb(toGrpcError(err)),
        );
    };
  server.addService(Admin.service, {
    getStatus: unary(() => backend.status()),
    listEntries: unary((q: { fromLsn: number; toLsn: number; table: string; state: string; limit: number }) => ({
      entries: backend.listEntries({ ...q, fromLsn: Number(q.fromLsn), toLsn: Number(q.toLsn), limit: Number(q.limit) || 100 }),
    })),
    getEntry: unary((q: { lsn: number }) => {
      const found = backend.getEntry(Number(q.lsn));
      if (!found) throw new ChorusError('NOT_FOUND', `no entry with LSN ${q.lsn} here`);
      return found;
    }),
    resync: unary(async (q: { fromLsn: number; toLsn: number; table: string }) => ({
      entries: await backend.resync({ fromLsn: Number(q.fromLsn), toLsn: Number(q.toLsn), table: q.table }),
    })),
    clone: unary(async (q: { from: string }) => ({ clone: await backend.clone(q.from) })),
    decommission: unary(async (q: { replica: string }) => ({ voided: await backend.decommission(q.replica) })),
    pause: unary(() => ({ paused: backend.setPaused(true) })),
    resume: unary(() => ({ paused: backend.setPaused(false) })),
  });
}
