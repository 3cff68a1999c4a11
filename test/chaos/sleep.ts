/**
 * Waits `ms`, or less when `signal` aborts first: the workload and the nemesis must stop within
 * a moment of the runner's end (or Ctrl-C), not at the end of their current wait.
 * Resolves true when the whole time passed, false when cut short.
 */
export function sleepUnlessAborted(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * A signal that aborts after `ms` or with `parent`, whichever comes first; `dispose` stops its
 * timer. (Not AbortSignal.any with AbortSignal.timeout: Node may collect such a timeout signal
 * before it fires, nodejs/node#57736, and the run never ends; a unit test here hung on it.)
 */
export function deadlineSignal(ms: number, parent?: AbortSignal): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const abort = () => controller.abort();
  const timer = setTimeout(abort, ms);
  parent?.addEventListener('abort', abort, { once: true });
  if (parent?.aborted) abort();
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      parent?.removeEventListener('abort', abort);
    },
  };
}
