import { readFileSync } from 'node:fs';

/** The package version, read once from package.json at the package root (two levels up from src/ or dist/). */
export const CHORUS_VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
})();
