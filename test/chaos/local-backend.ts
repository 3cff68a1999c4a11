import type { BackendStartOptions, ChaosBackend } from './backend.js';

/** Placeholder so that run.ts typechecks in this worktree; the real local backend replaces this file. */
export class LocalBackend {
  static start(_options: BackendStartOptions): Promise<ChaosBackend> {
    return Promise.reject(new Error('the local backend is not in this tree yet'));
  }
}
