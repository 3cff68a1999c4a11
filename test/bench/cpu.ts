/** CPU seconds of a dev cluster's processes, from /proc (utime + stime of each process and its descendants). */
import { readdirSync, readFileSync } from 'node:fs';
import type { ClusterInfo } from '../../src/dev/cluster.js';

export const CLK_TCK = 100;

// ---------------------------------------------------------------------------------------------
// /proc: CPU seconds of a process and its descendants

export type ProcessType = 'sidecar' | 'clickhouse-server' | 'zookeeper';

function procStat(pid: number): { ppid: number; cpu: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), cpu: (Number(fields[11]) + Number(fields[12])) / CLK_TCK };
  } catch {
    return undefined;
  }
}

/** CPU seconds (utime + stime) of each pid in `roots` and every descendant now alive. */
function treeCpu(roots: number[]): number {
  const children = new Map<number, number[]>();
  const cpu = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = procStat(Number(name));
    if (!s) continue;
    cpu.set(Number(name), s.cpu);
    children.set(s.ppid, [...(children.get(s.ppid) ?? []), Number(name)]);
  }
  let total = 0;
  const seen = new Set<number>();
  const walk = (pid: number) => {
    if (seen.has(pid)) return;
    seen.add(pid);
    total += cpu.get(pid) ?? 0;
    for (const c of children.get(pid) ?? []) walk(c);
  };
  for (const r of roots) walk(r);
  return total;
}

/** CPU seconds used so far by each kind of process of a dev cluster, this process, and the whole machine. */
export function cpuByType(cluster: ClusterInfo): Record<ProcessType | 'load generator' | 'machine (all processes)', number> {
  const self = process.cpuUsage();
  const [user, nice, system] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.split(/\s+/).slice(1, 4).map(Number);
  return {
    sidecar: treeCpu(cluster.replicas.map((r) => r.pids.sidecar).filter((p) => p > 0)),
    'clickhouse-server': treeCpu(cluster.replicas.map((r) => r.pids.clickhouse)),
    zookeeper: treeCpu([cluster.zookeeperPid]),
    'load generator': (self.user + self.system) / 1e6,
    'machine (all processes)': (user! + nice! + system!) / CLK_TCK,
  };
}

