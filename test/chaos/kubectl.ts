import { spawn } from 'node:child_process';

/*
 * How the kind backend reaches a cluster: kubectl argv lists pinned to one context and one
 * namespace (never whatever the current context names, as lib.sh's kc), and one runner for
 * them and for the bash that sources lib.sh. Argv lists rather than shell strings, so that
 * the plans of kind-plan.ts can be compared in a test without a cluster.
 */

export type Argv = readonly string[];

export interface KubeTarget {
  context: string;
  namespace: string;
}

export function kubectl(target: KubeTarget, ...args: string[]): string[] {
  return ['kubectl', '--context', target.context, '-n', target.namespace, ...args];
}

export interface CommandResult {
  argv: Argv;
  /** null when it was killed (timedOut says whether by us). */
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** The command could not start at all (not installed: ENOENT). */
  spawnError?: string;
}

export interface RunOptions {
  timeoutMs: number;
  /** Written to its stdin, which is closed after; without it stdin is empty. */
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Each chunk of stderr as it comes (long runs: the kind cluster's creation, the image build). */
  onStderr?: (chunk: string) => void;
}

/** Runs argv to its end (or timeoutMs, then SIGKILL); never rejects. */
export function runCommand(argv: Argv, options: RunOptions): Promise<CommandResult> {
  const [command, ...args] = argv as [string, ...string[]];
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    const finish = (result: Omit<CommandResult, 'argv' | 'stdout' | 'stderr' | 'timedOut'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ argv, stdout, stderr, timedOut, ...result });
    };
    const child = spawn(command, args, { env: options.env ?? process.env, cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      options.onStderr?.(chunk.toString());
    });
    child.on('error', (error) => finish({ code: null, spawnError: error.message }));
    child.on('close', (code) => finish({ code }));
    // A child that exits before reading its stdin would fail our write with EPIPE: not our failure.
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
  });
}

/** Runs argv and returns its stdout; throws, with its stderr, when it fails. */
export async function runOrThrow(argv: Argv, options: RunOptions): Promise<string> {
  const result = await runCommand(argv, options);
  if (result.code !== 0) throw new Error(describeFailure(result));
  return result.stdout;
}

export function describeFailure(result: CommandResult): string {
  const what = result.argv.map((arg) => (arg.length > 80 ? `${arg.slice(0, 40)}...` : arg)).join(' ');
  if (result.spawnError) return `${what}: ${result.spawnError}`;
  if (result.timedOut) return `${what}: no answer within the time allowed`;
  return `${what} exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`;
}
