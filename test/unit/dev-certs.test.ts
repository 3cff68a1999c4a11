import { spawnSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtCli } from '../support/built-cli.js';

const scratch: string[] = [];
const newDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'chorus-dev-certs-'));
  scratch.push(dir);
  return dir;
};

let cli: string;
const chorus = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 30_000 });
const certificate = (file: string) => new X509Certificate(readFileSync(file));

/** Issue 10: `chorus dev certs`, what the kind overlay's Secrets are made of. */
describe('chorus dev certs', () => {
  beforeAll(() => {
    cli = builtCli();
  });
  afterAll(() => {
    for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  });

  it('makes a CA and, per NAME, a certificate it signed with CN and DNS SAN = NAME', () => {
    const dir = join(newDir(), 'nested');
    const run = chorus(['dev', 'certs', '--dir', dir, 'clickhouse-shard1-0', 'r_2.example']);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const ca = certificate(join(dir, 'ca.crt'));
    for (const name of ['clickhouse-shard1-0', 'r_2.example']) {
      const cert = certificate(join(dir, `${name}.crt`));
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(cert.subject).toBe(`CN=${name}`);
      expect(cert.subjectAltName?.split(', ')).toContain(`DNS:${name}`);
      expect(cert.checkPrivateKey(createPrivateKey(readFileSync(join(dir, `${name}.key`))))).toBe(true);
    }
  });

  it('reuses the CA it finds, so that certificates of several runs trust each other', () => {
    const dir = newDir();
    expect(chorus(['dev', 'certs', '--dir', dir, 'first']).status).toBe(0);
    const caBefore = readFileSync(join(dir, 'ca.crt'), 'utf8');
    const run = chorus(['dev', 'certs', '--dir', dir, 'second']);
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/reused CA/);
    expect(readFileSync(join(dir, 'ca.crt'), 'utf8')).toBe(caBefore);
    const ca = certificate(join(dir, 'ca.crt'));
    expect(certificate(join(dir, 'first.crt')).verify(ca.publicKey)).toBe(true);
    expect(certificate(join(dir, 'second.crt')).verify(ca.publicKey)).toBe(true);
  });

  it('refuses a NAME that is not a plain file and DNS name, before writing anything', () => {
    for (const name of ['../escape', 'a/b', 'sp ace', '.hidden', 'ca', 'é']) {
      const dir = newDir();
      const run = chorus(['dev', 'certs', '--dir', dir, 'fine', name]);
      expect(run.status, name).toBe(2);
      expect(run.stderr).toMatch(/^chorus: certificate name /);
      expect(readdirSync(dir), name).toEqual([]);
    }
    const none = chorus(['dev', 'certs', '--dir', newDir()]);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/needs at least one NAME/);
  });

  it('refuses half a CA rather than replacing it', () => {
    const dir = newDir();
    writeFileSync(join(dir, 'ca.crt'), 'kept as is');
    const run = chorus(['dev', 'certs', '--dir', dir, 'r1']);
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/ca\.crt exists without its pair .*ca\.key/);
    expect(readFileSync(join(dir, 'ca.crt'), 'utf8')).toBe('kept as is');
  });
});

