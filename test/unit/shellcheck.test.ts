import { spawnSync } from 'node:child_process';
import { openSync, readSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { commandForm, parseDockerfile } from '../support/dockerfile.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function shellcheckMissing(): string | undefined {
  const probe = spawnSync('shellcheck', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    return 'shellcheck is not installed: scripts/setup.sh installs it (Debian package shellcheck); run `bash scripts/setup.sh` or `apt-get install shellcheck`';
  }
  return undefined;
}

function firstLine(path: string): string {
  const buffer = Buffer.alloc(128);
  const fd = openSync(path, 'r');
  try {
    const read = readSync(fd, buffer, 0, buffer.length, 0);
    return buffer.subarray(0, read).toString('utf8').split('\n')[0]!;
  } finally {
    closeSync(fd);
  }
}

/** Tracked *.sh files, and tracked files without the extension that start with a sh or bash shebang (.ci/run). */
function shellScripts(): string[] {
  const listed = spawnSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' });
  if (listed.status !== 0) throw new Error(`git ls-files failed in ${ROOT}: ${listed.stderr}`);
  return listed.stdout
    .split('\0')
    .filter(Boolean)
    .filter((path) => path.endsWith('.sh') || /^#!\s*\/(usr\/)?bin\/(env\s+)?(ba)?sh\b/.test(firstLine(join(ROOT, path))))
    .sort();
}

describe('shellcheck', () => {
  const scripts = shellScripts();

  it('finds the shell scripts, with and without .sh', () => {
    expect(scripts).toEqual(expect.arrayContaining(['.ci/run', 'scripts/setup.sh']));
  });

  it('passes on every shell script of the repository', () => {
    const missing = shellcheckMissing();
    if (missing) throw new Error(missing);
    const result = spawnSync('shellcheck', ['--format=gcc', '--external-sources', ...scripts], { cwd: ROOT, encoding: 'utf8' });
    expect(result.status === 0 ? '' : `${result.stdout}${result.stderr}`, `shellcheck findings in ${scripts.join(', ')}`).toBe('');
  });

  it("passes on the Dockerfile's shell-form RUN steps, as the image's /bin/sh runs them", () => {
    const missing = shellcheckMissing();
    if (missing) throw new Error(missing);
    const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
    const runs = dockerfile.stages.flatMap((stage) => stage.instructions.filter((i) => i.keyword === 'RUN'));
    expect(runs.length).toBeGreaterThan(0);
    const findings = runs.flatMap((run) => {
      const form = commandForm(run.args);
      if (!('shell' in form)) return [];
      const result = spawnSync('shellcheck', ['--format=gcc', '--shell=sh', '-'], { input: `${form.shell}\n`, encoding: 'utf8' });
      if (result.status === 0) return [];
      const lines = `${result.stdout}${result.stderr}`.trim().split('\n');
      return lines.map((line) => line.replace(/^-:\d+:(\d+):/, `Dockerfile line ${run.line} (RUN), column $1:`));
    });
    expect(findings.join('\n')).toBe('');
  });
});
