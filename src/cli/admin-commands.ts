import { parseArgs } from 'node:util';
import type { AdminStatus } from '../api/admin.js';
import type { PeerTransport } from '../tls/transport.js';
import { AdminClient } from './admin-client.js';
import { cliTransport, TLS_OPTIONS } from './tls-options.js';

export class UsageError extends Error {}

/** Exit codes scripts can rely on. */
export const EXIT = { ok: 0, failed: 1, usage: 2, degraded: 3 } as const;

const COMMON = {
  grpc: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean' },
  ...TLS_OPTIONS,
} as const;

const HELP: Record<string, string> = {
  status: 'chorus status --grpc HOST:PORT [--token T] [--json]\n  The whole shard as seen from one replica, each member asked for its own figures.\n  Exit 0 when every member is alive and ready, 3 when not (or when one takes inserts on its lease\n  because ZooKeeper is away), 1 when the replica cannot be asked.\n',
  entries: 'chorus entries --grpc HOST:PORT [--from LSN] [--to LSN] [--table db.t] [--state pending|stored|applied|voided] [--limit N] [--json]\n',
  entry: 'chorus entry LSN --grpc HOST:PORT [--json]\n',
  resync: 'chorus resync --grpc HOST:PORT [--from LSN] [--to LSN] [--table db.t]\n  Fetches again what is not applied yet; an applied LSN is never attached twice.\n',
  clone: 'chorus clone --grpc HOST:PORT --from REPLICA\n  Copies a consistent snapshot from REPLICA into the (empty) replica at HOST:PORT.\n',
  decommission: 'chorus decommission REPLICA --grpc HOST:PORT\n  Removes REPLICA from the shard for good (asked of another member); voids LSNs it allocated that nobody holds.\n',
  pause: 'chorus pause --grpc HOST:PORT\n  Stops applying entries on that replica (gossip and inserts go on).\n',
  resume: 'chorus resume --grpc HOST:PORT\n',
};

export const ADMIN_COMMANDS = Object.keys(HELP);

const bytes = (n: number) => (n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(1)} GiB` : n >= 1024 ** 2 ? `${(n / 1024 ** 2).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

interface EntryFields {
  lsn: number;
  kind: string;
  database: string;
  table: string;
  rows: number;
  bytes: number;
  origin: string;
  partition?: string;
  member?: string;
  leaseSize?: number;
  statement?: string;
}

/** What an entry does beyond adding a part, in a line: the statement of a mutation or schema change (cut short; --json has it whole), the partition of a drop... */
function what(e: EntryFields): string {
  const cut = (text: string) => (text.length > 80 ? `${text.slice(0, 77)}...` : text);
  if (e.kind === 'mutation' || e.kind === 'schema') return cut(e.statement ?? '');
  if (e.kind === 'drop_partition') return cut(`PARTITION ${e.partition ?? ''}`);
  if (e.kind === 'decommission') return e.member ?? '';
  if (e.kind === 'lease' && e.leaseSize) return `${e.leaseSize} LSNs`;
  return '';
}

export async function runAdminCommand(command: string, args: string[], out: (s: string) => void): Promise<number> {
  const extra = {
    from: { type: 'string' },
    to: { type: 'string' },
    table: { type: 'string' },
    state: { type: 'string' },
    limit: { type: 'string' },
  } as const;
  const { values, positionals } = parseArgs({ args, options: { ...COMMON, ...extra }, allowPositionals: true });
  if (values.help) {
    out(HELP[command]!);
    return EXIT.ok;
  }
  const address = values.grpc ?? process.env.CHORUS_GRPC;
  if (!address) throw new UsageError(`--grpc HOST:PORT is required (or CHORUS_GRPC)\n${HELP[command]}`);
  const token = values.token ?? process.env.CHORUS_ADMIN_TOKEN ?? '';
  const transport = cliTransport(values);
  const num = (v: string | undefined, name: string) => {
    if (v === undefined) return 0;
    if (!/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer`);
    return Number(v);
  };
  const client = new AdminClient(address, token, transport);
  try {
    switch (command) {
      case 'status':
        return await status(client, token, transport, values.json ?? false, out);
      case 'entries': {
        const reply = await client.call<{ entries: unknown[] }>('listEntries', {
          fromLsn: num(values.from, 'from'),
          toLsn: num(values.to, 'to'),
          table: values.table ?? '',
          state: values.state ?? '',
          limit: num(values.limit, 'limit') || 100,
        });
        if (values.json) out(JSON.stringify(reply.entries, null, 2) + '\n');
        else {
          const rows = [['LSN', 'KIND', 'TABLE', 'STATE', 'ROWS', 'BYTES', 'ORIGIN', 'WHAT', 'LAST ERROR']];
          for (const e of reply.entries as Array<{ entry: EntryFields; state: string; lastError: string }>) {
            rows.push([String(e.entry.lsn), e.entry.kind, e.entry.table ? `${e.entry.database}.${e.entry.table}` : '-', e.state, String(e.entry.rows), bytes(Number(e.entry.bytes)), e.entry.origin, what(e.entry), e.lastError]);
          }
          out(table(rows));
        }
        return EXIT.ok;
      }
      case 'entry': {
        const lsn = num(positionals[0], 'LSN');
        if (!lsn) throw new UsageError(HELP.entry!);
        out(JSON.stringify(await client.call('getEntry', { lsn }), null, 2) + '\n');
        return EXIT.ok;
      }
      case 'resync': {
        const r = await client.call<{ entries: number }>('resync', { fromLsn: num(values.from, 'from'), toLsn: num(values.to, 'to'), table: values.table ?? '' });
        out(values.json ? JSON.stringify(r) + '\n' : `${r.entries} entries will be fetched and applied again\n`);
        return EXIT.ok;
      }
      case 'clone': {
        if (!values.from) throw new UsageError(HELP.clone!);
        const r = await client.call<{ clone: unknown }>('clone', { from: values.from }, 3_600_000);
        out(JSON.stringify(r.clone, null, 2) + '\n');
        return EXIT.ok;
      }
      case 'decommission': {
        const replica = positionals[0];
        if (!replica) throw new UsageError(HELP.decommission!);
        const r = await client.call<{ voided: number[] }>('decommission', { replica }, 60_000);
        out(values.json ? JSON.stringify(r) + '\n' : `${replica} decommissioned; voided LSNs: ${r.voided.length ? r.voided.join(', ') : 'none'}\n`);
        return EXIT.ok;
      }
      case 'pause':
      case 'resume': {
        const r = await client.call<{ paused: boolean }>(command);
        out(`applying ${r.paused ? 'paused' : 'running'}\n`);
        return EXIT.ok;
      }
      default:
        throw new UsageError(`unknown command ${command}`);
    }
  } finally {
    client.close();
  }
}

async function status(client: AdminClient, token: string, transport: PeerTransport, json: boolean, out: (s: string) => void): Promise<number> {
  const asked = await client.call<AdminStatus>('getStatus');
  // Each member is asked for its own figures; one that does not answer is shown as seen from here.
  const own = await Promise.all(
    asked.members.map(async (m) => {
      if (m.name === asked.replica) return asked;
      if (!m.grpc) return undefined;
      const c = new AdminClient(m.grpc, token, transport, 2000);
      try {
        return await c.call<AdminStatus>('getStatus');
      } catch {
        return undefined;
      } finally {
        c.close();
      }
    }),
  );
  const members = asked.members.map((m, i) => {
    const s = own[i];
    return {
      name: m.name,
      state: m.state,
      appliedWatermark: Number(s?.appliedWatermark ?? m.appliedWatermark),
      lagEntries: s ? Number(s.lag.entries) : Math.max(0, Number(asked.maxLsn) - Number(m.appliedWatermark)),
      lagSeconds: s ? Number(s.lag.seconds) : null,
      partStoreBytes: s ? Number(s.partStoreBytes) : null,
      ready: s ? s.ready : false,
      notReadyReasons: s ? s.notReadyReasons : ['did not answer'],
      backpressure: s ? (s.backpressure ?? []) : [],
      lease: s?.lease ? leaseOf(s.lease) : null,
      reachable: s !== undefined,
    };
  });
  const duplicates = new Map<string, AdminStatus['leaseDuplicates'][number]>();
  for (const s of [asked, ...own]) for (const d of s?.leaseDuplicates ?? []) duplicates.set(`${d.lsn}:${d.duplicateOf}`, { ...d, lsn: Number(d.lsn), duplicateOf: Number(d.duplicateOf) });
  const leaseDuplicates = [...duplicates.values()].sort((a, b) => a.lsn - b.lsn);
  const alarms = [asked, ...own].flatMap((s) => (s ? (s.alarms ?? []).map((a) => `${s.replica}: ${a}`) : []));
  const unique = [...new Set(alarms)];
  const failing = [asked, ...own].flatMap((s) => (s ? (s.failing ?? []).map((f) => ({ ...f, replica: s.replica, lsn: Number(f.lsn), attempts: Number(f.attempts) })) : []));
  // An entry that keeps failing holds back what orders after it: a degraded shard, once it is no passing hiccup.
  const stuck = failing.some((f) => f.attempts >= STUCK_ATTEMPTS);
  // Inserts going on on leases while ZooKeeper is away is a degraded shard too: the leases run out.
  const healthy = unique.length === 0 && !stuck && members.every((m) => m.state === 'decommissioned' || (m.state === 'alive' && m.ready && !m.lease?.zookeeperAway));
  if (json) out(JSON.stringify({ asked: asked.replica, shard: asked.shard, cluster: asked.cluster, maxLsn: Number(asked.maxLsn), allocatingMember: asked.allocatingMember, healthy, members, alarms: unique, failing, leaseDuplicates }, null, 2) + '\n');
  else {
    out(`shard ${asked.shard} (cluster ${asked.cluster}): asked ${asked.replica}, highest LSN ${asked.maxLsn}, allocating member ${asked.allocatingMember}, ZooKeeper ${asked.zookeeperSession}\n\n`);
    const rows = [['MEMBER', 'STATE', 'APPLIED LSN', 'LAG', 'LAG (s)', 'PART STORE', 'READY']];
    for (const m of members) {
      rows.push([
        m.name,
        m.state,
        String(m.appliedWatermark),
        String(m.lagEntries),
        m.lagSeconds === null ? '-' : m.lagSeconds.toFixed(1),
        m.partStoreBytes === null ? '-' : bytes(m.partStoreBytes),
        m.reachable ? (m.ready ? 'yes' : `no: ${m.notReadyReasons.join('; ')}`) : 'unreachable',
      ]);
    }
    out(table(rows));
    const held = members.flatMap((m) => m.backpressure.map((b) => `${m.name}: ${b}`));
    if (held.length) out(`\nBACKPRESSURE (${held.length}):\n${held.map((b) => `  ${b}\n`).join('')}`);
    const leased = members.filter((m) => m.lease && m.lease.size > 0);
    if (leased.length) {
      const line = (m: (typeof members)[number]) => {
        const l = m.lease!;
        const range = l.first ? `LSN ${l.first}-${l.last}, ${l.free} free, ${l.used} used` : 'none held';
        const away = l.zookeeperAway ? `; ZooKeeper away since ${new Date(l.awaySinceMs).toISOString()}, inserts on the lease` : '';
        return `  ${m.name}: ${range}${away}; ${l.allocatedOnLease} block(s) allocated on leases since start\n`;
      };
      out(`\nLEASES (ZooKeeper outage reserve):\n${leased.map(line).join('')}`);
    }
    if (leaseDuplicates.length) {
      out(
        `\nSTORED TWICE WHILE ZOOKEEPER WAS AWAY (${leaseDuplicates.length}):\n${leaseDuplicates
          .map((d) => `  ${d.table}: LSN ${d.lsn} (${d.origins[0]}) and LSN ${d.duplicateOf} (${d.origins[1]}) hold the same block\n`)
          .join('')}`,
      );
    }
    if (failing.length) {
      const line = (f: (typeof failing)[number]) => `  ${f.replica}: LSN ${f.lsn} (${f.kind} ${f.table}), ${f.attempts} attempt${f.attempts === 1 ? '' : 's'}: ${f.error}\n`;
      out(`\nFAILING, RETRIED (${failing.length}):\n${failing.map(line).join('')}`);
    }
    if (unique.length) out(`\nALARMS (${unique.length}):\n${unique.map((a) => `  ${a}\n`).join('')}`);
  }
  return healthy ? EXIT.ok : EXIT.degraded;
}

/** Failed tries after which an entry counts against the shard's health (chorus status exits 3). */
const STUCK_ATTEMPTS = 5;

/** A lease status as gRPC delivers it (64-bit fields may come as strings). */
function leaseOf(l: AdminStatus['lease']): AdminStatus['lease'] {
  return {
    ...l,
    first: Number(l.first),
    last: Number(l.last),
    awaySinceMs: Number(l.awaySinceMs),
    allocatedOnLease: Number(l.allocatedOnLease),
  };
}
