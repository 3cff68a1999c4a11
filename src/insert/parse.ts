import { canonicalPartition } from '../clickhouse/partition.js';
import { ChorusError } from '../core/errors.js';

export interface InsertTarget {
  database: string | undefined;
  table: string;
  /** [start, end) of the table reference in the text: what staging replaces. */
  span: [number, number];
}

export type ParseResult =
  | { kind: 'insert'; target: InsertTarget }
  | { kind: 'other' }
  /** The text ended before the table reference did; more input is needed. */
  | { kind: 'incomplete' };

const WORD = /[A-Za-z_][A-Za-z0-9_$]*/y;

class Scanner {
  pos = 0;
  constructor(
    readonly text: string,
    readonly final: boolean,
  ) {}

  /** Skips whitespace and comments; false when the text ended inside a comment. */
  skip(): boolean {
    const t = this.text;
    for (;;) {
      while (this.pos < t.length && /\s/.test(t[this.pos]!)) this.pos++;
      if (t.startsWith('--', this.pos) || t.startsWith('#', this.pos)) {
        const nl = t.indexOf('\n', this.pos);
        if (nl < 0) return false;
        this.pos = nl + 1;
      } else if (t.startsWith('/*', this.pos)) {
        const end = t.indexOf('*/', this.pos + 2);
        if (end < 0) return false;
        this.pos = end + 2;
      } else return true;
    }
  }

  get atEnd(): boolean {
    return this.pos >= this.text.length;
  }

  word(): string | undefined {
    WORD.lastIndex = this.pos;
    const m = WORD.exec(this.text);
    if (!m) return undefined;
    this.pos += m[0].length;
    return m[0];
  }

  /** An identifier, bare or quoted with ` or "; `null` when the text ends inside it. */
  identifier(): string | null | undefined {
    const t = this.text;
    const quote = t[this.pos];
    if (quote === '`' || quote === '"') {
      let out = '';
      let i = this.pos + 1;
      while (i < t.length) {
        const c = t[i]!;
        if (c === '\\') {
          if (i + 1 >= t.length) return null;
          out += t[i + 1];
          i += 2;
        } else if (c === quote) {
          if (t[i + 1] === quote) {
            out += quote;
            i += 2;
          } else {
            this.pos = i + 1;
            return out;
          }
        } else {
          out += c;
          i++;
        }
      }
      return null;
    }
    const start = this.pos;
    const w = this.word();
    if (w === undefined) return undefined;
    // A bare word that reaches the end of the text may continue in the next chunk.
    if (this.pos >= t.length && !this.final) {
      this.pos = start;
      return null;
    }
    return w;
  }
}

/**
 * Finds the target of `INSERT INTO [TABLE] [db.]table ...` at the start of a statement.
 * Only the table reference is read: the rest (columns, SETTINGS, FORMAT, VALUES, SELECT)
 * goes to ClickHouse untouched, so every format and clause it accepts keeps working.
 */
export function parseInsert(text: string, opts: { final: boolean }): ParseResult {
  const result = scanInsert(text, opts.final);
  if (result.kind !== 'incomplete' || !opts.final) return result;
  if (/^\s*INSERT\b/i.test(text)) throw new ChorusError('BAD_QUERY', 'incomplete INSERT statement: expected INSERT INTO [db.]table');
  return { kind: 'other' };
}

function scanInsert(text: string, final: boolean): ParseResult {
  const s = new Scanner(text, final);
  if (!s.skip()) return { kind: 'incomplete' };
  const first = s.word();
  if (first === undefined) return s.atEnd ? { kind: 'incomplete' } : { kind: 'other' };
  if (s.atEnd) return first.length < 6 && 'INSERT'.startsWith(first.toUpperCase()) ? { kind: 'incomplete' } : { kind: 'other' };
  if (first.toUpperCase() !== 'INSERT') return { kind: 'other' };
  if (!s.skip() || s.atEnd) return { kind: 'incomplete' };
  const into = s.word();
  if (into === undefined || into.toUpperCase() !== 'INTO') {
    throw new ChorusError('BAD_QUERY', 'expected INSERT INTO [db.]table');
  }
  if (!s.skip() || s.atEnd) return { kind: 'incomplete' };
  let start = s.pos;
  let name = s.identifier();
  if (name === null) return { kind: 'incomplete' };
  if (name !== undefined && /^(TABLE|FUNCTION)$/i.test(name) && text[start] !== '`' && text[start] !== '"') {
    if (name.toUpperCase() === 'FUNCTION') {
      throw new ChorusError('BAD_QUERY', 'INSERT INTO FUNCTION is not replicated; send it to ClickHouse directly');
    }
    if (!s.skip() || s.atEnd) return { kind: 'incomplete' };
    start = s.pos;
    name = s.identifier();
    if (name === null) return { kind: 'incomplete' };
  }
  if (name === undefined || name === '') throw new ChorusError('BAD_QUERY', 'expected a table name after INSERT INTO');
  let database: string | undefined;
  let table = name;
  if (text[s.pos] === '.') {
    s.pos++;
    if (s.atEnd) return { kind: 'incomplete' };
    const second = s.identifier();
    if (second === null) return { kind: 'incomplete' };
    if (second === undefined || second === '') throw new ChorusError('BAD_QUERY', 'expected a table name after the database name');
    database = name;
    table = second;
  }
  return { kind: 'insert', target: { database, table, span: [start, s.pos] } };
}

export type TableOp =
  | { kind: 'drop_partition'; database: string | undefined; table: string; partition: string }
  | { kind: 'truncate'; database: string | undefined; table: string };

/**
 * The statements Chorus turns into log entries besides inserts, because they do not commute
 * with inserts: `ALTER TABLE [db.]t DROP PARTITION expr` and `TRUNCATE TABLE [db.]t`.
 * Returns undefined for anything else. An ALTER that drops a partition among other commands is
 * refused: its parts would be applied in different orders.
 */
export function parseTableOp(text: string): TableOp | undefined {
  const s = new Scanner(text, true);
  if (!s.skip()) return undefined;
  const first = s.word()?.toUpperCase();
  if (first !== 'ALTER' && first !== 'TRUNCATE') return undefined;
  if (!s.skip() || s.word()?.toUpperCase() !== 'TABLE') return undefined;
  if (first === 'TRUNCATE') {
    // TRUNCATE TABLE [IF EXISTS] [db.]t
    s.skip();
    const save = s.pos;
    if (s.word()?.toUpperCase() === 'IF') {
      s.skip();
      s.word();
      s.skip();
    } else s.pos = save;
    const ref = tableRef(s);
    if (!ref) return undefined;
    s.skip();
    if (!s.atEnd && !/^;\s*$/.test(text.slice(s.pos))) return undefined;
    return { kind: 'truncate', ...ref };
  }
  s.skip();
  const ref = tableRef(s);
  if (!ref) return undefined;
  s.skip();
  const save = s.pos;
  if (s.word()?.toUpperCase() !== 'DROP') return undefined;
  s.skip();
  if (s.word()?.toUpperCase() !== 'PARTITION') {
    s.pos = save;
    return undefined;
  }
  s.skip();
  // A literal only, in its canonical form: no expression, no comment, no second command
  // (`, DELETE WHERE ...`) can ride along with the drop.
  const partition = text.slice(s.pos);
  if (!partition.trim()) throw new ChorusError('BAD_QUERY', 'DROP PARTITION needs a partition expression');
  return { kind: 'drop_partition', ...ref, partition: canonicalPartition(partition) };
}

function tableRef(s: Scanner): { database: string | undefined; table: string } | undefined {
  const name = s.identifier();
  if (!name) return undefined;
  if (s.text[s.pos] === '.') {
    s.pos++;
    const table = s.identifier();
    return table ? { database: name, table } : undefined;
  }
  return { database: undefined, table: name };
}

type Token = { kind: 'word' | 'quoted' | 'punct' | 'string' | 'number'; text: string; start: number; end: number };

/**
 * The tokens of a statement as ClickHouse's lexer reads them: comments dropped (`--`, `#`,
 * block comments, nested when `nestComments`), strings and quoted identifiers read with their escapes.
 * Stops at the first `;` that ends a statement (the HTTP interface runs one).
 */
function tokens(text: string, nestComments: boolean, rest?: { after: number }): Token[] {
  const out: Token[] = [];
  let i = 0;
  const n = text.length;
  if (rest) rest.after = n;
  while (i < n) {
    const c = text[i]!;
    if (/\s/.test(c)) i++;
    else if (text.startsWith('--', i) || c === '#') {
      const nl = text.indexOf('\n', i);
      i = nl < 0 ? n : nl + 1;
    } else if (text.startsWith('/*', i)) {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (text.startsWith('*/', i)) {
          depth--;
          i += 2;
        } else if (nestComments && text.startsWith('/*', i)) {
          depth++;
          i += 2;
        } else i++;
      }
    } else if (c === "'" || c === '`' || c === '"') {
      let value = '';
      let j = i + 1;
      for (; j < n; j++) {
        const d = text[j]!;
        if (d === '\\') value += text[++j] ?? '';
        else if (d === c) {
          if (text[j + 1] === c) {
            value += c;
            j++;
          } else break;
        } else value += d;
      }
      out.push({ kind: c === "'" ? 'string' : 'quoted', text: value, start: i, end: j + 1 });
      i = j + 1;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /[A-Za-z_][A-Za-z0-9_$]*/y;
      m.lastIndex = i;
      const w = m.exec(text)![0];
      out.push({ kind: 'word', text: w, start: i, end: i + w.length });
      i += w.length;
    } else if (/[0-9]/.test(c)) {
      const m = /[0-9][A-Za-z0-9_.]*/y;
      m.lastIndex = i;
      const w = m.exec(text)![0];
      out.push({ kind: 'number', text: w, start: i, end: i + w.length });
      i += w.length;
    } else {
      if (c === ';') {
        if (rest) rest.after = i + 1;
        break;
      }
      out.push({ kind: 'punct', text: c, start: i, end: i + 1 });
      i++;
    }
  }
  return out;
}

export interface UnreplicatedWrite {
  /** What the statement is, for the error message: `ALTER TABLE ... UPDATE`, `DELETE FROM`, ... */
  statement: string;
  /** The tables it would change; it is refused when Chorus replicates any of them. */
  tables: Array<{ database: string | undefined; table: string }>;
}

/**
 * Statements that would change a table's data or schema on this replica only: every ALTER but
 * a lone DROP PARTITION, `DELETE FROM`, `UPDATE`, TRUNCATE variants parseTableOp does not read,
 * OPTIMIZE, DROP/DETACH/ATTACH/RENAME/EXCHANGE of tables. Reads and everything else: undefined.
 * Comments are read both as nested and as flat (releases differ), and a statement is a write
 * when either reading says so: a comment cannot hide one.
 */
export function findUnreplicatedWrite(text: string): UnreplicatedWrite | undefined {
  return scanWrite(tokens(text, false)) ?? scanWrite(tokens(text, true));
}

function scanWrite(toks: Token[]): UnreplicatedWrite | undefined {
  let i = 0;
  const kw = (k = i) => (toks[k]?.kind === 'word' ? toks[k]!.text.toUpperCase() : undefined);
  const name = (k: number) => toks[k]?.kind === 'word' || toks[k]?.kind === 'quoted';
  /** [db.]t at i (after optional IF EXISTS / IF NOT EXISTS); advances i. */
  const ref = (): { database: string | undefined; table: string } | undefined => {
    if (kw() === 'IF') {
      i++;
      if (kw() === 'NOT') i++;
      if (kw() === 'EXISTS') i++;
    }
    if (!name(i)) return undefined;
    const first = toks[i]!.text;
    i++;
    if (toks[i]?.kind === 'punct' && toks[i]!.text === '.' && name(i + 1)) {
      const table = toks[i + 1]!.text;
      i += 2;
      return { database: first, table };
    }
    return { database: undefined, table: first };
  };
  const one = (statement: string) => {
    const t = ref();
    return t ? { statement, tables: [t] } : undefined;
  };
  const first = kw();
  i = 1;
  switch (first) {
    case 'ALTER': {
      if (kw() === 'TABLE') i++;
      const t = ref();
      if (!t) return undefined;
      const command = toks.slice(i, i + 3).map((x) => x.text.toUpperCase()).join(' ');
      return { statement: `ALTER TABLE ... ${command}`.trim(), tables: [t] };
    }
    case 'DELETE':
      if (kw() !== 'FROM') return undefined;
      i++;
      return one('DELETE FROM');
    case 'UPDATE':
      return one('UPDATE');
    case 'TRUNCATE':
      if (kw() === 'TABLE') i++;
      return one('TRUNCATE TABLE (with ON CLUSTER, SYNC or other clauses)');
    case 'OPTIMIZE':
      if (kw() !== 'TABLE') return undefined;
      i++;
      return one('OPTIMIZE TABLE');
    case 'DROP':
    case 'DETACH':
    case 'ATTACH': {
      if (kw() === 'TEMPORARY') return undefined;
      if (kw() !== 'TABLE' && kw() !== 'VIEW' && kw() !== 'DICTIONARY') {
        // `DROP t`/`DETACH t` (no kind) name a table too
        if (kw() === 'DATABASE' || !name(i)) return undefined;
      } else i++;
      return one(`${first} TABLE`);
    }
    case 'RENAME':
    case 'EXCHANGE': {
      if (kw() === 'TABLE' || kw() === 'TABLES' || kw() === 'DICTIONARY') i++;
      else if (kw() === 'DATABASE') return undefined;
      const tables: Array<{ database: string | undefined; table: string }> = [];
      while (i < toks.length) {
        const t = ref();
        if (t) tables.push(t);
        else i++;
      }
      return tables.length ? { statement: `${first} TABLE`, tables } : undefined;
    }
    default:
      return undefined;
  }
}

/**
 * Moves past whitespace, comments and an INSERT's column list; false when the text ends first.
 */
function skipColumnList(s: Scanner): boolean {
  const text = s.text;
  if (!s.skip() || s.atEnd) return false;
  if (text[s.pos] === '(') {
    // The column list: names only (quoted ones may hold parentheses).
    let depth = 0;
    for (; s.pos < text.length; s.pos++) {
      const c = text[s.pos]!;
      if (c === '`' || c === '"') {
        if (s.identifier() === null) return false;
        s.pos--;
      } else if (c === '(') depth++;
      else if (c === ')' && --depth === 0) {
        s.pos++;
        break;
      }
    }
    if (depth > 0) return false;
    if (!s.skip() || s.atEnd) return false;
  }
  return true;
}

/**
 * The SELECT of an `INSERT ... SELECT` (or `... WITH ...`), from `from` (the end of the table
 * reference), comments and a column list skipped; undefined for an insert of data.
 */
export function insertSelect(text: string, from: number): string | undefined {
  const clause = insertClause(text, from);
  return clause && (clause.word === 'SELECT' || clause.word === 'WITH') ? text.slice(clause.start) : undefined;
}

/** The first word after an INSERT's table reference and column list (FORMAT, VALUES, SELECT, SETTINGS, ...), upper-cased. */
export function insertClause(text: string, from: number): { word: string; start: number } | undefined {
  const s = new Scanner(text, true);
  s.pos = from;
  if (!skipColumnList(s)) return undefined;
  const start = s.pos;
  const word = s.word()?.toUpperCase();
  return word === undefined ? undefined : { word, start };
}

/**
 * The settings an INSERT's own text sets, from `from` (the end of its table reference): the
 * `SETTINGS name = value, ...` clause before FORMAT/VALUES, and, for `INSERT ... SELECT`, any
 * word of the SELECT (its trailing SETTINGS apply to the insert too), so that a staging insert
 * cannot be told to go asynchronous or deduplicate from inside the statement, where it would
 * override the URL settings Chorus sets. 'incomplete' when the text ends before the data starts.
 */
export function insertSettings(text: string, from: number, final: boolean): string[] | 'incomplete' {
  const s = new Scanner(text, final);
  s.pos = from;
  if (!skipColumnList(s)) return final ? [] : 'incomplete';
  const start = s.pos;
  const word = s.word();
  if (word === undefined) return [];
  if (s.atEnd && !final) return 'incomplete';
  const upper = word.toUpperCase();
  if (upper === 'SELECT' || upper === 'WITH') {
    if (!final) return 'incomplete';
    return tokens(text.slice(start), false)
      .filter((t) => t.kind === 'word')
      .map((t) => t.text);
  }
  if (upper !== 'SETTINGS') return [];
  const names: string[] = [];
  for (;;) {
    if (!s.skip() || s.atEnd) return final ? names : 'incomplete';
    const name = s.word();
    if (name === undefined) return names;
    names.push(name);
    if (!s.skip() || s.atEnd) return final ? names : 'incomplete';
    if (text[s.pos] !== '=') return names;
    s.pos++;
    if (!s.skip() || s.atEnd) return final ? names : 'incomplete';
    // The value: a string, or a number or word (which may continue in the next chunk).
    if (text[s.pos] === "'") {
      const end = /'(?:[^'\\]|\\.|'')*'/y;
      end.lastIndex = s.pos;
      const m = end.exec(text);
      if (!m) return final ? names : 'incomplete';
      s.pos += m[0].length;
    } else {
      const m = /[-+]?[A-Za-z0-9_.]+/y;
      m.lastIndex = s.pos;
      const v = m.exec(text);
      if (!v) return names;
      s.pos += v[0].length;
      if (s.atEnd && !final) return 'incomplete';
    }
    if (!s.skip() || s.atEnd) return final ? names : 'incomplete';
    if (text[s.pos] !== ',') return names;
    s.pos++;
  }
}

/** An `ALTER TABLE ... UPDATE/DELETE/CLEAR COLUMN` or lightweight `DELETE FROM`, read for replication. */
export interface MutationOp {
  kind: 'mutation';
  database: string | undefined;
  table: string;
  /** `DELETE FROM t WHERE ...` (a lightweight delete, 23.x and later) rather than `ALTER TABLE t ...`. */
  lightweight: boolean;
  /** What follows the table reference, in canonical form: comments dropped, every literal as written. */
  commands: string;
  /** The grants ClickHouse asks of the statement's user (ALTER DELETE, ALTER UPDATE, ALTER CLEAR COLUMN). */
  grants: string[];
  /** Why it cannot be replicated as written; thrown only when the table is one Chorus replicates. */
  refusal?: ChorusError;
}

/** The statement of `op` on `qualified` (a quoted `db`.`t`): what a replica runs, or what the origin checks on a staging table. */
export function mutationStatement(op: Pick<MutationOp, 'lightweight' | 'commands'>, qualified: string): string {
  return op.lightweight ? `DELETE FROM ${qualified} ${op.commands}` : `ALTER TABLE ${qualified} ${op.commands}`;
}

/**
 * Functions whose value differs between replicas or between runs: a mutation using one would
 * change different rows (or write different values) on each replica. ReplicatedMergeTree refuses
 * them too (`allow_nondeterministic_mutations`).
 */
const NONDETERMINISTIC =
  /^(rand\w*|random\w*|generateUUID\w*|generateULID|generateSnowflakeID|now|now64|nowInBlock|today|yesterday|rowNumberIn\w*|blockNumber|blockSize|runningDifference\w*|runningAccumulate|neighbor|hostName|fqdn|uptime|serverUUID|dictGet\w*|joinGet\w*|getMacro|getSetting|file|url|s3\w*|remote\w*|timezone)$/i;

/**
 * Reads a mutation: `ALTER TABLE [db.]t` followed only by `UPDATE c = e[, ...] [IN PARTITION p]
 * WHERE ...`, `DELETE [IN PARTITION p] WHERE ...` and `CLEAR COLUMN c [IN PARTITION p]`
 * commands, or `DELETE FROM [db.]t [IN PARTITION p] WHERE ...`. Undefined for anything else
 * (another ALTER command among them, ON CLUSTER): the statement guard decides about those.
 * `refusal` says, with a stable code, why a mutation cannot be replicated as written: a setting
 * in the text, a query parameter, a subquery or a non-deterministic function, comments that
 * releases read differently, a second statement.
 */
export function parseMutation(text: string): MutationOp | undefined {
  return readBothWays(text, readMutation);
}

/**
 * Reads a statement with comments taken as flat and as nested (releases differ), as `read` reads
 * its tokens. Read differently, or followed by a second statement, it carries a refusal.
 */
function readBothWays<T extends { refusal?: ChorusError }>(text: string, read: (text: string, toks: Token[]) => T | undefined): T | undefined {
  const flatRest = { after: 0 };
  const flat = read(text, tokens(text, false, flatRest));
  const nested = read(text, tokens(text, true));
  const op = flat ?? nested;
  if (!op) return undefined;
  const bare = (x: T | undefined) => JSON.stringify(x === undefined ? null : { ...x, refusal: undefined });
  if (bare(flat) !== bare(nested)) op.refusal ??= new ChorusError('BAD_QUERY', 'the statement reads differently depending on how its comments nest: remove the comments');
  if (tokens(text.slice(flatRest.after), false).length > 0) op.refusal ??= new ChorusError('BAD_QUERY', 'one statement at a time: text follows the statement after ;');
  return op;
}

function readMutation(text: string, toks: Token[]): MutationOp | undefined {
  let i = 0;
  const kw = (k = i) => (toks[k]?.kind === 'word' ? toks[k]!.text.toUpperCase() : undefined);
  const isName = (k: number) => toks[k]?.kind === 'word' || toks[k]?.kind === 'quoted';
  const first = kw(0);
  let lightweight: boolean;
  if (first === 'ALTER' && kw(1) === 'TABLE') lightweight = false;
  else if (first === 'DELETE' && kw(1) === 'FROM') lightweight = true;
  else return undefined;
  i = 2;
  if (!isName(i)) return undefined;
  let database: string | undefined;
  let table = toks[i]!.text;
  i++;
  if (toks[i]?.kind === 'punct' && toks[i]!.text === '.' && isName(i + 1)) {
    database = table;
    table = toks[i + 1]!.text;
    i += 2;
  }
  const body = toks.slice(i);
  if (body.length === 0) return undefined;
  const grants = new Set<string>();
  let depth = 0;
  let command: 'delete' | 'update' | 'clear' | undefined;
  let whereSeen = false;
  let segmentStart = true;
  let refusal: ChorusError | undefined;
  for (const [k, t] of body.entries()) {
    const word = t.kind === 'word' ? t.text.toUpperCase() : undefined;
    if (t.kind === 'punct' && (t.text === '{' || t.text === '$')) {
      refusal ??= new ChorusError('BAD_QUERY', `a replicated mutation cannot hold ${t.text === '{' ? 'query parameters or map literals ({...})' : 'heredoc strings ($$...$$)'}: write the values as literals`);
    }
    if (word === 'SELECT') refusal ??= new ChorusError('NONDETERMINISTIC_MUTATION', 'a mutation with a subquery is not replicated: each replica would run it against its own state at its own time; write the values it selects as literals');
    if (t.kind === 'word' && body[k + 1]?.kind === 'punct' && body[k + 1]!.text === '(' && NONDETERMINISTIC.test(t.text)) {
      refusal ??= new ChorusError('NONDETERMINISTIC_MUTATION', `${t.text}() gives each replica another value: a mutation using it would change different rows on each; compute the value first and write it as a literal`);
    }
    if (segmentStart) {
      segmentStart = false;
      if (lightweight) {
        if (k !== 0) return undefined;
      } else if (word === 'DELETE') {
        command = 'delete';
        grants.add('ALTER DELETE');
      } else if (word === 'UPDATE') {
        command = 'update';
        whereSeen = false;
        grants.add('ALTER UPDATE');
      } else if (word === 'CLEAR' && kw(i + k + 1) === 'COLUMN') {
        command = 'clear';
        grants.add('ALTER CLEAR COLUMN');
      } else if (command === 'update' && !whereSeen && (t.kind === 'word' || t.kind === 'quoted')) {
        // the next assignment of an UPDATE's list
      } else return undefined;
    }
    if (t.kind === 'punct' && (t.text === '(' || t.text === '[')) depth++;
    else if (t.kind === 'punct' && (t.text === ')' || t.text === ']')) depth--;
    else if (depth === 0 && word === 'WHERE') whereSeen = true;
    else if (depth === 0 && word === 'SETTINGS') {
      refusal ??= new ChorusError('UNSUPPORTED_SETTING', 'a SETTINGS clause inside a replicated mutation is not taken: pass settings such as mutations_sync as URL parameters');
    } else if (depth === 0 && t.kind === 'punct' && t.text === ',') {
      if (lightweight) return undefined;
      segmentStart = true;
    }
  }
  if (lightweight) grants.add('ALTER DELETE');
  let commands = '';
  for (const [k, t] of body.entries()) {
    if (k > 0 && body[k - 1]!.end !== t.start) commands += ' ';
    commands += text.slice(t.start, t.end);
  }
  return { kind: 'mutation', database, table, lightweight, commands, grants: [...grants], ...(refusal ? { refusal } : {}) };
}

export type SchemaAction = 'create_table' | 'drop_table' | 'rename_table' | 'alter_table' | 'create_database' | 'drop_database';

/** A schema change read for replication: CREATE / DROP / RENAME / ALTER TABLE, CREATE / DROP DATABASE. */
export interface SchemaOp {
  kind: 'schema';
  action: SchemaAction;
  database: string | undefined;
  /** '' for a database's own CREATE / DROP. */
  table: string;
  /** IF [NOT] EXISTS was given. */
  ifExists: boolean;
  /** rename_table: the new name. */
  to?: { database: string | undefined; table: string };
  /**
   * What follows the name, canonical: create_table, its definition (after `AS [db.]t` when it
   * copies another table's); alter_table, its commands; create_database, its ENGINE clause.
   */
  rest: string;
  /** create_table: the engine it names (undefined: none, the copied table's or the server's default). */
  engine?: string;
  /** create_table: the table whose structure `CREATE TABLE t AS [db.]src` copies. */
  asTable?: { database: string | undefined; table: string };
  /** The grants ClickHouse asks of the statement's user. */
  grants: string[];
  /** Why it cannot be replicated as written; thrown only where Chorus replicates the database or table. */
  refusal?: ChorusError;
}

/** ALTER TABLE commands that change a table's definition only; each with the grant ClickHouse asks for it. */
const SCHEMA_COMMANDS: Record<string, string> = {
  'ADD COLUMN': 'ALTER ADD COLUMN',
  'DROP COLUMN': 'ALTER DROP COLUMN',
  'MODIFY COLUMN': 'ALTER MODIFY COLUMN',
  'RENAME COLUMN': 'ALTER RENAME COLUMN',
  'COMMENT COLUMN': 'ALTER COMMENT COLUMN',
  'MODIFY SETTING': 'ALTER SETTINGS',
  'RESET SETTING': 'ALTER SETTINGS',
  'MODIFY TTL': 'ALTER TTL',
  'REMOVE TTL': 'ALTER TTL',
  'ADD INDEX': 'ALTER ADD INDEX',
  'DROP INDEX': 'ALTER DROP INDEX',
  'MODIFY COMMENT': 'ALTER MODIFY COMMENT',
};

/** The statement a replica runs for `op` (names quoted by `quote`): always idempotent where ClickHouse allows it, since a replica may run it again after a crash. */
export function schemaStatement(op: SchemaOp, quote: (database: string | undefined, table: string) => string): string {
  switch (op.action) {
    case 'create_table':
      return `CREATE TABLE IF NOT EXISTS ${quote(op.database, op.table)}${op.asTable ? ` AS ${quote(op.asTable.database, op.asTable.table)}` : ''}${op.rest ? ` ${op.rest}` : ''}`;
    case 'drop_table':
      return `DROP TABLE IF EXISTS ${quote(op.database, op.table)}`;
    case 'rename_table':
      return `RENAME TABLE ${quote(op.database, op.table)} TO ${quote(op.to!.database, op.to!.table)}`;
    case 'alter_table':
      return `ALTER TABLE ${quote(op.database, op.table)} ${op.rest}`;
    case 'create_database':
      return `CREATE DATABASE IF NOT EXISTS ${quote(undefined, op.database!)}${op.rest ? ` ${op.rest}` : ''}`;
    case 'drop_database':
      return `DROP DATABASE IF EXISTS ${quote(undefined, op.database!)}`;
  }
}

/**
 * Reads a schema change Chorus replicates; undefined for any other statement (and for a CREATE
 * of something other than a plain table: views, dictionaries, temporary tables). Like
 * parseMutation, `refusal` says why one cannot be replicated as written.
 */
export function parseSchema(text: string): SchemaOp | undefined {
  return readBothWays(text, readSchema);
}

function readSchema(text: string, toks: Token[]): SchemaOp | undefined {
  let i = 0;
  const kw = (k = i) => (toks[k]?.kind === 'word' ? toks[k]!.text.toUpperCase() : undefined);
  const isName = (k: number) => toks[k]?.kind === 'word' || toks[k]?.kind === 'quoted';
  const punct = (k: number, p: string) => toks[k]?.kind === 'punct' && toks[k]!.text === p;
  const ref = (): { database: string | undefined; table: string } | undefined => {
    if (!isName(i)) return undefined;
    const first = toks[i]!.text;
    i++;
    if (punct(i, '.') && isName(i + 1)) {
      i += 2;
      return { database: first, table: toks[i - 1]!.text };
    }
    return { database: undefined, table: first };
  };
  const ifClause = (words: string[]) => {
    if (words.every((w, k) => kw(i + k) === w)) {
      i += words.length;
      return true;
    }
    return false;
  };
  const render = (from: number, to = toks.length) => {
    let out = '';
    for (let k = from; k < to; k++) {
      const t = toks[k]!;
      if (k > from && toks[k - 1]!.end !== t.start) out += ' ';
      out += text.slice(t.start, t.end);
    }
    return out;
  };
  const base = (action: SchemaAction, database: string | undefined, table: string, ifExists: boolean, grants: string[]): SchemaOp => ({ kind: 'schema', action, database, table, ifExists, rest: '', grants });
  const first = kw(0);
  const second = kw(1);
  i = 2;
  if ((first === 'CREATE' || first === 'DROP') && second === 'DATABASE') {
    const ifExists = first === 'CREATE' ? ifClause(['IF', 'NOT', 'EXISTS']) : ifClause(['IF', 'EXISTS']);
    if (!isName(i) || punct(i + 1, '.')) return undefined;
    const database = toks[i]!.text;
    i++;
    const op = base(first === 'CREATE' ? 'create_database' : 'drop_database', database, '', ifExists, [first === 'CREATE' ? 'CREATE DATABASE' : 'DROP DATABASE']);
    if (kw() === 'ON' && kw(i + 1) === 'CLUSTER') op.refusal = onCluster();
    else if (first === 'CREATE') {
      // Only an engine without arguments: a database engine that reaches elsewhere (MySQL, ...) is no replicated database.
      if (kw() === 'ENGINE' && punct(i + 1, '=') && toks[i + 2]?.kind === 'word' && i + 3 === toks.length) op.rest = render(i);
      else if (i < toks.length) op.refusal = new ChorusError('NOT_REPLICATED_STATEMENT', 'CREATE DATABASE of a replicated database takes at most ENGINE = <engine> (Atomic or Ordinary)');
    } else if (i < toks.length && !(kw() === 'SYNC' && i + 1 === toks.length)) return undefined;
    return op;
  }
  if (first === 'CREATE' && second === 'TABLE') {
    const ifExists = ifClause(['IF', 'NOT', 'EXISTS']);
    const name = ref();
    if (!name) return undefined;
    const op = base('create_table', name.database, name.table, ifExists, ['CREATE TABLE']);
    if (kw() === 'ON' && kw(i + 1) === 'CLUSTER') {
      op.refusal = onCluster();
      return op;
    }
    if (kw() === 'AS' && kw(i + 1) !== 'SELECT' && kw(i + 1) !== 'WITH' && !punct(i + 1, '(')) {
      i++;
      const source = ref();
      if (!source) return undefined;
      if (punct(i, '(')) {
        // AS table_function(...): not a table's structure
        op.refusal = new ChorusError('NOT_REPLICATED_STATEMENT', 'CREATE TABLE ... AS a table function is not replicated');
        return op;
      }
      op.asTable = source;
    }
    let depth = 0;
    for (let k = i; k < toks.length; k++) {
      const t = toks[k]!;
      if (t.kind === 'punct' && (t.text === '(' || t.text === '[')) depth++;
      else if (t.kind === 'punct' && (t.text === ')' || t.text === ']')) depth--;
      else if (depth === 0 && t.kind === 'word') {
        const w = t.text.toUpperCase();
        if (w === 'ENGINE' && punct(k + 1, '=') && toks[k + 2]?.kind === 'word') op.engine ??= toks[k + 2]!.text;
        if ((w === 'AS' && (kw(k + 1) === 'SELECT' || kw(k + 1) === 'WITH' || punct(k + 1, '('))) || w === 'POPULATE' || w === 'EMPTY') {
          op.refusal ??= new ChorusError('NOT_REPLICATED_STATEMENT', 'CREATE TABLE ... AS SELECT would fill the table on one replica: create it, then send INSERT ... SELECT through Chorus');
        }
      }
      if (t.kind === 'punct' && (t.text === '{' || t.text === '$')) op.refusal ??= new ChorusError('BAD_QUERY', 'a replicated CREATE TABLE cannot hold query parameters or heredoc strings');
    }
    op.rest = render(i);
    if (!op.rest && !op.asTable) return undefined;
    return op;
  }
  if (first === 'DROP' && second === 'TABLE') {
    const ifExists = ifClause(['IF', 'EXISTS']);
    const name = ref();
    if (!name) return undefined;
    const op = base('drop_table', name.database, name.table, ifExists, ['DROP TABLE']);
    if (kw() === 'ON' && kw(i + 1) === 'CLUSTER') op.refusal = onCluster();
    else if (punct(i, ',')) op.refusal = new ChorusError('NOT_REPLICATED_STATEMENT', 'DROP TABLE of several tables at once is not replicated: drop them one by one');
    else if (i < toks.length && !((kw() === 'SYNC' || (kw() === 'NO' && kw(i + 1) === 'DELAY')) && toks.length <= i + 2)) return undefined;
    return op;
  }
  if (first === 'RENAME' && second === 'TABLE') {
    const from = ref();
    if (!from || kw() !== 'TO') return undefined;
    i++;
    const to = ref();
    if (!to) return undefined;
    const op = { ...base('rename_table', from.database, from.table, false, ['DROP TABLE', 'CREATE TABLE']), to };
    if (kw() === 'ON' && kw(i + 1) === 'CLUSTER') op.refusal = onCluster();
    else if (punct(i, ',')) op.refusal = new ChorusError('NOT_REPLICATED_STATEMENT', 'RENAME TABLE of several tables at once is not replicated: rename them one by one');
    else if (i < toks.length) return undefined;
    return op;
  }
  if (first === 'ALTER' && second === 'TABLE') {
    const name = ref();
    if (!name || i >= toks.length) return undefined;
    if (kw() === 'ON' && kw(i + 1) === 'CLUSTER') return undefined;
    const grants = new Set<string>();
    let depth = 0;
    let command = '';
    let segmentStart = true;
    let refusal: ChorusError | undefined;
    for (let k = i; k < toks.length; k++) {
      const t = toks[k]!;
      const word = t.kind === 'word' ? t.text.toUpperCase() : undefined;
      if (segmentStart) {
        segmentStart = false;
        const pair = `${word} ${kw(k + 1)}`;
        if (SCHEMA_COMMANDS[pair]) {
          command = pair;
          grants.add(SCHEMA_COMMANDS[pair]);
        } else if ((command === 'MODIFY SETTING' && (t.kind === 'word' || t.kind === 'quoted') && punct(k + 1, '=')) || (command === 'RESET SETTING' && t.kind === 'word')) {
          // the next setting of the list
        } else return undefined;
      }
      if (t.kind === 'punct' && (t.text === '(' || t.text === '[')) depth++;
      else if (t.kind === 'punct' && (t.text === ')' || t.text === ']')) depth--;
      else if (depth === 0 && t.kind === 'punct' && t.text === ',') segmentStart = true;
      else if (depth === 0 && word === 'SETTINGS') refusal ??= new ChorusError('UNSUPPORTED_SETTING', 'a SETTINGS clause inside a replicated ALTER is not taken: pass settings as URL parameters');
      if (t.kind === 'punct' && (t.text === '{' || t.text === '$')) refusal ??= new ChorusError('BAD_QUERY', 'a replicated ALTER cannot hold query parameters or heredoc strings');
    }
    return { ...base('alter_table', name.database, name.table, false, [...grants]), rest: render(i), ...(refusal ? { refusal } : {}) };
  }
  return undefined;
}

function onCluster(): ChorusError {
  return new ChorusError('NOT_REPLICATED_STATEMENT', 'ON CLUSTER is not taken for a database or table Chorus replicates: send the statement without it, and Chorus runs it on every replica of the shard');
}
