import type { Logger } from '../core/logger.js';
import { readTlsMaterial, sameMaterial, type TlsMaterial, type TlsPaths } from './material.js';

/**
 * Keeps a replica's TLS files current. The files are read again every `intervalMs` and
 * compared by content, not by inotify or mtime: Kubernetes replaces a mounted Secret by
 * swapping a `..data` symlink, which a watch on the file itself does not see. A set that does
 * not fit together (a rotation caught halfway, the certificate new and the key still old) is
 * ignored until it does; the previous one stays in use.
 */
export class TlsWatcher {
  private current: TlsMaterial;
  private readonly listeners = new Set<(material: TlsMaterial) => void>();
  private timer: NodeJS.Timeout | null = null;
  private lastProblem = '';

  constructor(
    readonly paths: TlsPaths,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {
    this.current = readTlsMaterial(paths);
  }

  get material(): TlsMaterial {
    return this.current;
  }

  /** Called with every new set; returns the unsubscribe function. */
  onChange(listener: (material: TlsMaterial) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.check(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  check(): void {
    let next: TlsMaterial;
    try {
      next = readTlsMaterial(this.paths);
    } catch (err) {
      const problem = (err as Error).message;
      if (problem !== this.lastProblem) this.logger.warn({ err: problem }, 'TLS files changed but cannot be used yet; keeping the previous certificate');
      this.lastProblem = problem;
      return;
    }
    this.lastProblem = '';
    if (sameMaterial(next, this.current)) return;
    this.current = next;
    this.logger.info({ cert: this.paths.cert, name: next.name }, 'TLS certificate reloaded');
    for (const listener of this.listeners) listener(next);
  }
}
