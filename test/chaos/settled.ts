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
