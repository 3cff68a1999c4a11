import { spawn } from 'node:child_process';
import { copyFileSync, cpSync, createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';

/**
 * Just enough of Docker's build to check this project's Dockerfile where no Docker engine
 * runs: its instructions, its .dockerignore, and its stages run as plain directories.
 * Not modelled (and refused, so that using them in the Dockerfile is noticed): ADD, SHELL,
 * heredocs, COPY wildcards, a WORKDIR that changes within a stage.
 */

export interface Instruction {
  keyword: string;
  /** The arguments after the --flags. */
  args: string;
  flags: Map<string, string>;
  /** 1-based line of the instruction's first physical line. */
  line: number;
}

export interface Stage {
  name: string;
  /** The base with global ARGs substituted: an image reference, or an earlier stage's name. */
  base: string;
  line: number;
  instructions: Instruction[];
}

export interface Dockerfile {
  globalArgs: Map<string, string>;
  stages: Stage[];
}

export type CommandForm = { exec: string[] } | { shell: string };

function splitFlags(text: string): { flags: Map<string, string>; rest: string } {
  const flags = new Map<string, string>();
  let rest = text.trim();
  for (let m = /^--([\w-]+)(?:=(\S*))?\s*/.exec(rest); m; m = /^--([\w-]+)(?:=(\S*))?\s*/.exec(rest)) {
    flags.set(m[1]!, m[2] ?? '');
    rest = rest.slice(m[0].length);
  }
  return { flags, rest };
}

function substitute(text: string, vars: Map<string, string>): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced: string | undefined, bare: string | undefined) => vars.get((braced ?? bare)!) ?? whole);
}

export function parseDockerfile(text: string): Dockerfile {
  const logical: { text: string; line: number }[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split('\n').forEach((raw, index) => {
    const trimmed = raw.trim();
    // Comment and blank lines go, also between continued lines, as in Docker.
    if (trimmed.startsWith('#') || trimmed === '') return;
    const continued = /\\\s*$/.test(raw);
    const piece = continued ? raw.replace(/\\\s*$/, '') : raw;
    pending = pending ? { text: pending.text + piece, line: pending.line } : { text: piece, line: index + 1 };
    if (!continued) {
      logical.push(pending);
      pending = undefined;
    }
  });
  if (pending) throw new Error(`Dockerfile line ${pending.line}: continued past the end of the file`);

  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const { text: lineText, line } of logical) {
    const m = /^\s*(\w+)\s*(.*)$/s.exec(lineText);
    if (!m) throw new Error(`Dockerfile line ${line}: not an instruction: ${lineText}`);
    const keyword = m[1]!.toUpperCase();
    const { flags, rest } = splitFlags(m[2]!);
    if (/<<\s*-?\w/.test(rest) && keyword === 'RUN') throw new Error(`Dockerfile line ${line}: heredocs are not modelled`);
    if (keyword === 'ARG' && stages.length === 0) {
      const [name, value] = rest.split('=', 2);
      globalArgs.set(name!.trim(), (value ?? '').trim());
      continue;
    }
    if (keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?\s*$/i.exec(rest);
      if (!from) throw new Error(`Dockerfile line ${line}: FROM ${rest}`);
      stages.push({ name: from[2] ?? String(stages.length), base: substitute(from[1]!, globalArgs), line, instructions: [] });
      continue;
    }
    const stage = stages.at(-1);
    if (!stage) throw new Error(`Dockerfile line ${line}: ${keyword} before the first FROM`);
    stage.instructions.push({ keyword, args: rest.trim(), flags, line });
  }
  return { globalArgs, stages };
}

/** Exec form (a JSON array) or shell form of RUN, CMD, ENTRYPOINT and HEALTHCHECK's CMD. */
export function commandForm(args: string): CommandForm {
  const trimmed = args.trim();
  if (trimmed.startsWith('[')) {
    const parsed = JSON.parse(trimmed) as unknown;
    if (Array.isArray(parsed) && parsed.every((a) => typeof a === 'string')) return { exec: parsed };
    throw new Error(`not an exec form: ${trimmed}`);
  }
  return { shell: trimmed };
}

/** ENV and LABEL pairs: key=value, the value bare or double-quoted (with backslash escapes); ENV's legacy `KEY value`. */
export function keyValues(args: string): Map<string, string> {
  const pairs = new Map<string, string>();
  const legacy = /^(\w+)\s+(.*)$/s.exec(args.trim());
  if (legacy) return pairs.set(legacy[1]!, legacy[2]!.trim());
  const pair = /([\w.-]+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*/gy;
  let rest = args.trim();
  while (rest.length) {
    pair.lastIndex = 0;
    const m = pair.exec(rest);
    if (!m) throw new Error(`cannot read key=value pairs in: ${rest}`);
    pairs.set(m[1]!, m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3]!);
    rest = rest.slice(m[0].length);
  }
  return pairs;
}

/**
 * The simple commands of a shell-form RUN, as words: split at && || ; | and newlines, quotes
 * kept together. Enough for RUN lines that do not put those separators inside quotes.
 */
export function simpleCommands(shell: string): string[][] {
  return shell
    .split(/&&|\|\||;|\||\n/)
    .map((part) => (part.match(/"[^"]*"|'[^']*'|\S+/g) ?? []).filter((w) => !['(', ')', '{', '}'].includes(w)))
    .map((words) => {
      // VAR=value before a command sets its environment; it is not the command.
      let i = 0;
      while (i < words.length && /^\w+=/.test(words[i]!)) i++;
      return words.slice(i);
    })
    .filter((words) => words.length > 0);
}

/** Packages a RUN's `apt-get install` lines install. */
export function aptPackages(run: Instruction): string[] {
  const form = commandForm(run.args);
  if (!('shell' in form)) return [];
  return simpleCommands(form.shell)
    .filter((words) => words[0] === 'apt-get' && words.includes('install'))
    .flatMap((words) => words.slice(words.indexOf('install') + 1).filter((w) => !w.startsWith('-')));
}

// ---- .dockerignore, with the semantics of Docker's pattern matcher (moby/patternmatcher) ----

export interface IgnorePattern {
  text: string;
  /** A `!pattern`: puts back what an earlier pattern left out. */
  exception: boolean;
  regex: RegExp;
  segments: string[];
}

function globToRegexSource(glob: string): string {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const ch = glob[i]!;
    if (ch === '*' && glob[i + 1] === '*') {
      i++;
      if (glob[i + 1] === '/') {
        i++;
        out += '(?:.*/)?';
      } else out += '.*';
    } else if (ch === '*') out += '[^/]*';
    else if (ch === '?') out += '[^/]';
    else if (ch === '\\' && i + 1 < glob.length) out += '\\' + glob[++i];
    else if (ch === '[') {
      const end = glob.indexOf(']', i + 1);
      if (end < 0) throw new Error(`unclosed [ in ${glob}`);
      out += '[' + glob.slice(i + 1, end).replace(/^!/, '^') + ']';
      i = end;
    } else out += ch.replace(/[.+^${}()|\]\\]/g, '\\$&');
  }
  return out;
}

export function parseDockerignore(text: string): IgnorePattern[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const exception = line.startsWith('!');
      const cleaned = posix.normalize((exception ? line.slice(1) : line).trim().replace(/^\/+/, '')).replace(/\/+$/, '');
      return { text: line, exception, regex: new RegExp(`^${globToRegexSource(cleaned)}$`), segments: cleaned.split('/') };
    });
}

/** Docker's rule: the last pattern that matches the path or one of its parent folders decides. */
export function isIgnored(patterns: IgnorePattern[], path: string): boolean {
  const parts = path.split('/');
  const selfAndParents = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  let ignored = false;
  for (const pattern of patterns) {
    if (selfAndParents.some((p) => pattern.regex.test(p))) ignored = !pattern.exception;
  }
  return ignored;
}

/** Whether some exception could put back a path below this ignored folder, so it must be walked. */
function mayKeepBelow(patterns: IgnorePattern[], dir: string): boolean {
  const dirSegments = dir.split('/');
  return patterns.some(
    (pattern) =>
      pattern.exception &&
      dirSegments.every((segment, i) => {
        const own = pattern.segments[i];
        return own === undefined || own.includes('**') || new RegExp(`^${globToRegexSource(own)}$`).test(segment);
      }),
  );
}

/** Copies into `target` what `docker build` would send from `source`; returns the paths copied (files and symlinks). */
export function buildContext(source: string, target: string, patterns: IgnorePattern[]): string[] {
  const copied: string[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(source, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        if (!isIgnored(patterns, path) || mayKeepBelow(patterns, path)) walk(path);
        continue;
      }
      if (isIgnored(patterns, path)) continue;
      mkdirSync(dirname(join(target, path)), { recursive: true });
      if (entry.isSymbolicLink()) symlinkSync(readlinkSync(join(source, path)), join(target, path));
      else copyFileSync(join(source, path), join(target, path));
      copied.push(path);
    }
  };
  mkdirSync(target, { recursive: true });
  walk('');
  return copied.sort();
}

// ---- the stages, run as directories ----

/** Commands a RUN may hold for the test to run it here. */
const NPM_COMMANDS = new Set(['npm', 'npx', 'node']);
/** Commands that set up the image's operating system, with why they are not run here. */
const OS_COMMANDS: Record<string, string> = {
  'apt-get': 'installs Debian packages into the image; this machine has its own',
  rm: "cleans the image's apt lists",
  getent: "looks for the image's user",
  groupadd: "creates the image's group",
  useradd: "creates the image's user",
  ln: "links a command into the image's /usr/local/bin",
};

export interface StepRecord {
  stage: string;
  line: number;
  command: string;
  /** Why it was not run; undefined when it was run here. */
  skipped?: string;
}

export interface StageResult {
  /** The folder standing for the stage's WORKDIR. */
  dir: string;
  workdir: string | undefined;
  env: Record<string, string>;
}

export function classifyRun(run: Instruction): { run: true } | { run: false; reason: string } {
  const form = commandForm(run.args);
  if (!('shell' in form)) return NPM_COMMANDS.has(form.exec[0]!) ? { run: true } : { run: false, reason: `exec form of ${form.exec[0]} is not modelled` };
  const programs = simpleCommands(form.shell)
    .map((words) => words[0]!)
    .filter((program) => program !== 'set');
  if (programs.length > 0 && programs.every((p) => NPM_COMMANDS.has(p))) return { run: true };
  if (programs.length > 0 && programs.every((p) => p in OS_COMMANDS)) {
    return { run: false, reason: [...new Set(programs)].map((p) => `${p} ${OS_COMMANDS[p]}`).join('; ') };
  }
  throw new Error(
    `Dockerfile line ${run.line}: RUN mixes npm/node steps with others, or runs a command the test cannot place (${programs.join(', ')}); ` +
      'keep npm/node steps and OS setup in separate RUNs, or teach test/support/dockerfile.ts the command',
  );
}

function runLogged(command: string, cwd: string, env: NodeJS.ProcessEnv, logFile: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const log = createWriteStream(logFile, { flags: 'a' });
    log.write(`\n$ ${command}\n`);
    const child = spawn('bash', ['-c', command], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    child.on('error', reject);
    child.on('close', (code) => {
      log.end(() => {
        if (code === 0) return resolve();
        const tail = readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n');
        reject(new Error(`\`${command}\` in ${cwd} exited ${code}; end of ${logFile}:\n${tail}`));
      });
    });
  });
}

/**
 * Runs every stage as a folder under `workDir`/stages: COPY from the context or an earlier
 * stage, RUN of npm/node steps with `bash -c` there, OS setup skipped with its reason. Stages
 * that do not depend on each other run at once, as BuildKit runs them.
 */
export async function runStages(opts: {
  dockerfile: Dockerfile;
  context: string;
  workDir: string;
  env: NodeJS.ProcessEnv;
}): Promise<{ stages: Map<string, StageResult>; steps: StepRecord[] }> {
  const steps: StepRecord[] = [];
  const running = new Map<string, Promise<StageResult>>();
  mkdirSync(join(opts.workDir, 'logs'), { recursive: true });

  const inStage = (state: StageResult, imagePath: string, line: number): string => {
    if (!state.workdir) throw new Error(`Dockerfile line ${line}: a file step before WORKDIR is not modelled`);
    const absolute = posix.resolve(state.workdir, imagePath);
    const rel = posix.relative(state.workdir, absolute);
    if (rel.startsWith('..')) throw new Error(`Dockerfile line ${line}: ${imagePath} is outside WORKDIR ${state.workdir}, which is not modelled`);
    return join(state.dir, rel);
  };

  const runStage = async (stage: Stage): Promise<StageResult> => {
    const parent = running.get(stage.base);
    const dir = join(opts.workDir, 'stages', stage.name);
    const inherited = parent ? await parent : undefined;
    const state: StageResult = { dir, workdir: inherited?.workdir, env: { ...inherited?.env } };
    if (inherited) cpSync(inherited.dir, dir, { recursive: true, verbatimSymlinks: true });
    else mkdirSync(dir, { recursive: true });
    const logFile = join(opts.workDir, 'logs', `${stage.name}.log`);

    for (const instruction of stage.instructions) {
      const { keyword, args, line, flags } = instruction;
      switch (keyword) {
        case 'WORKDIR': {
          const next = posix.resolve(state.workdir ?? '/', args);
          if (state.workdir && state.workdir !== next) throw new Error(`Dockerfile line ${line}: a second WORKDIR in one stage is not modelled`);
          state.workdir = next;
          mkdirSync(dir, { recursive: true });
          break;
        }
        case 'ENV':
          for (const [key, value] of keyValues(args)) state.env[key] = value;
          break;
        case 'ARG':
          // Without a default (and no --build-arg here) an ARG sets nothing.
          if (args.includes('=')) for (const [key, value] of keyValues(args)) state.env[key] = value;
          break;
        case 'COPY': {
          for (const flag of flags.keys()) if (!['from', 'chown', 'chmod', 'link'].includes(flag)) throw new Error(`Dockerfile line ${line}: COPY --${flag} is not modelled`);
          if (args.startsWith('[')) throw new Error(`Dockerfile line ${line}: the JSON form of COPY is not modelled`);
          const words = args.split(/\s+/);
          const dest = words.pop()!;
          if (words.some((w) => /[*?[]/.test(w))) throw new Error(`Dockerfile line ${line}: COPY wildcards are not modelled`);
          const from = flags.get('from');
          const source = from ? running.get(from) : undefined;
          if (from && !source) throw new Error(`Dockerfile line ${line}: COPY --from=${from} names no earlier stage`);
          const sourceState = source ? await source : undefined;
          const target = inStage(state, dest, line);
          const intoFolder = dest.endsWith('/') || words.length > 1;
          for (const word of words) {
            const path = sourceState ? inStage(sourceState, word, line) : join(opts.context, posix.normalize(word).replace(/^\/+/, ''));
            if (!existsSync(path)) throw new Error(`Dockerfile line ${line}: COPY source ${word} is not in the ${from ? `stage ${from}` : 'build context'}`);
            // A folder's contents are copied, not the folder itself, as Docker does.
            if (statSync(path).isDirectory()) cpSync(path, target, { recursive: true, verbatimSymlinks: true });
            else {
              const file = intoFolder ? join(target, posix.basename(word)) : target;
              mkdirSync(dirname(file), { recursive: true });
              copyFileSync(path, file);
            }
          }
          break;
        }
        case 'RUN': {
          const verdict = classifyRun(instruction);
          if (!verdict.run) {
            steps.push({ stage: stage.name, line, command: args, skipped: verdict.reason });
            break;
          }
          const form = commandForm(args);
          const command = 'shell' in form ? form.shell : form.exec.map((w) => `'${w.replace(/'/g, `'\\''`)}'`).join(' ');
          if (!state.workdir) throw new Error(`Dockerfile line ${line}: RUN before WORKDIR is not modelled`);
          steps.push({ stage: stage.name, line, command });
          await runLogged(command, dir, { ...opts.env, ...state.env }, logFile);
          break;
        }
        case 'LABEL':
        case 'USER':
        case 'EXPOSE':
        case 'HEALTHCHECK':
        case 'ENTRYPOINT':
        case 'CMD':
        case 'STOPSIGNAL':
          break;
        default:
          throw new Error(`Dockerfile line ${line}: ${keyword} is not modelled`);
      }
    }
    return state;
  };

  for (const stage of opts.dockerfile.stages) {
    const promise = runStage(stage);
    // A failure is reported once, by the await below, even when no later stage waits for this one.
    promise.catch(() => undefined);
    running.set(stage.name, promise);
  }
  const stages = new Map<string, StageResult>();
  for (const [name, promise] of running) stages.set(name, await promise);
  return { stages, steps: steps.sort((a, b) => a.line - b.line) };
}

/** Every file and symlink below `dir`, relative to it. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(dir, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) walk(path);
      else out.push(path);
    }
  };
  walk('');
  return out.sort();
}
