import type { AdminStatus } from '../../src/api/admin.js';

/**
 * What ChaosBackend.settled() asks of each sidecar, from its /_chorus/status: ready, nothing
 * left to apply, and every replica of the shard a member it sees alive. The same whichever
 * backend reads the status.
 */
export function sidecarSettled(status: Pick<AdminStatus, 'ready' | 'lag' | 'members'>, replicas: readonly string[]): boolean {
  if (!status.ready || status.lag.entries !== 0) return false;
  const alive = new Set(status.members.filter((member) => member.state === 'alive').map((member) => member.name));
  return replicas.every((replica) => alive.has(replica));
}

/**
 * The pairs of LSNs the sidecars report holding one block (a retry that reached a second
 * replica while ZooKeeper was away, both on their leases), per table: the union of what each
 * status lists, as "lsn:duplicateOf".
 */
export function reportedDuplicates(statuses: ReadonlyArray<Partial<Pick<AdminStatus, 'leaseDuplicates'>> | undefined>): Record<string, string[]> {
  const perTable: Record<string, Set<string>> = {};
  for (const s of statuses) for (const d of s?.leaseDuplicates ?? []) (perTable[d.table] ??= new Set()).add(`${d.lsn}:${d.duplicateOf}`);
  return Object.fromEntries(Object.entries(perTable).map(([table, pairs]) => [table, [...pairs].sort()]));
}
