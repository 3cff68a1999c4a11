import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/dev/cluster.js';

export const CLI = join(PACKAGE_ROOT, 'bin', 'chorus.js');

/**
 * The chorus CLI as users run it (bin/chorus.js over dist/). `npm test` builds first; a test
 * file run on its own builds when dist/ is missing, as make-secrets.sh does.
 */
export function builtCli(): string {
  if (!existsSync(join(PACKAGE_ROOT, 'dist', 'cli', 'main.js'))) {
    execFileSync('npm', ['run', '--silent', 'build'], { cwd: PACKAGE_ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  return CLI;
}
