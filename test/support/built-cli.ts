import { execFile, execFileSync } from 'node:child_process';
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

/** Runs the built CLI with `env` over this process's environment (its own CHORUS_* left out, so only what a test passes counts). */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CHORUS_')));
    execFile(process.execPath, [CLI, ...args], { env: { ...clean, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
