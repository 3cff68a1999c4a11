import type { BackendStartOptions, ChaosBackend } from './backend.js';

/** Placeholder so that run.ts typechecks in this worktree; the real kind backend replaces this file. */
export class KindBackend {
  static start(_options: BackendStartOptions): Promise<ChaosBackend> {
    return Promise.reject(new Error('the kind backend is not in this tree yet'));
  }
}
