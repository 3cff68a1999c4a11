import type { ChorusError } from '../../src/core/errors.js';

/** The code of the ChorusError `fn` throws, or undefined when it returns. */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as ChorusError).code;
  }
}
