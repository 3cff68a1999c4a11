import { ChorusError } from '../core/errors.js';
import { quoteString } from './http.js';

/**
 * A partition as `ALTER TABLE ... DROP PARTITION` names it, reduced to literals: `ID 'id'`, a
 * string, a number, or a tuple of these. A drop travels between replicas as a log entry and is
 * spliced into SQL on every one of them, so it is carried in the canonical form this module
 * writes, and a follower re-reads and re-writes it before use: whatever a peer sends, only a
 * literal reaches ClickHouse, never an expression or a second statement.
 */
export type PartitionValue = { kind: 'string'; value: string } | { kind: 'number'; text: string } | { kind: 'tuple'; items: PartitionValue[] };
export type PartitionSpec = { kind: 'id'; id: string } | { kind: 'value'; value: PartitionValue };

/** Longest partition expression read; a partition key of a few columns is far shorter. */
export const MAX_PARTITION_TEXT = 4096;
const MAX_DEPTH = 8;

class LiteralReader {
  pos = 0;
  constructor(readonly text: string) {}

  fail(what: string): never {
    throw new ChorusError(
      'BAD_QUERY',
      `DROP PARTITION takes a literal (a string, a number, a tuple of them, or ID 'id'); ${what} at offset ${this.pos} of ${JSON.stringify(this.text.slice(0, 200))}`,
    );
  }

  /** Whitespace only: a comment inside a partition literal has no use and hides what follows. */
  skip(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos]!)) this.pos++;
  }

  string(): string {
    const t = this.text;
    let out = '';
    let i = this.pos + 1;
    for (; i < t.length; i++) {
      const c = t[i]!;
      if (c === '\\') {
        const next = t[++i];
        if (next === undefined) break;
        out += next === 'n' ? '\n' : next === 't' ? '\t' : next === 'r' ? '\r' : next === '0' ? '\0' : next;
      } else if (c === "'") {
        if (t[i + 1] === "'") {
          out += "'";
          i++;
        } else {
          this.pos = i + 1;
          return out;
        }
      } else out += c;
    }
    this.pos = i;
    return this.fail('an unterminated string');
  }

  value(depth: number): PartitionValue {
    if (depth > MAX_DEPTH) this.fail('tuples nested too deep');
    this.skip();
    const t = this.text;
    const c = t[this.pos];
    if (c === "'") return { kind: 'string', value: this.string() };
    const number = /^-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)/.exec(t.slice(this.pos));
    if (number) {
      this.pos += number[0].length;
      return { kind: 'number', text: number[0] };
    }
    let open = false;
    if (/^tuple\s*\(/i.test(t.slice(this.pos))) {
      this.pos = t.indexOf('(', this.pos) + 1;
      open = true;
    } else if (c === '(') {
      this.pos++;
      open = true;
    }
    if (!open) return this.fail('expected a literal');
    const items: PartitionValue[] = [];
    this.skip();
    if (t[this.pos] === ')') {
      this.pos++;
      return { kind: 'tuple', items };
    }
    for (;;) {
      items.push(this.value(depth + 1));
      this.skip();
      const sep = t[this.pos];
      this.pos++;
      if (sep === ')') break;
      if (sep !== ',') {
        this.pos--;
        this.fail("expected ',' or ')'");
      }
    }
    // `(x)` is x in SQL; `tuple(x)` stays a tuple of one.
    return items.length === 1 && c === '(' ? items[0]! : { kind: 'tuple', items };
  }
}

/** Reads a DROP PARTITION argument; throws BAD_QUERY for anything that is not a literal. */
export function parsePartition(text: string): PartitionSpec {
  if (text.length > MAX_PARTITION_TEXT) throw new ChorusError('BAD_QUERY', `partition expression longer than ${MAX_PARTITION_TEXT} characters`);
  const r = new LiteralReader(text);
  r.skip();
  let spec: PartitionSpec;
  const id = /^ID\s*'/i.exec(text.slice(r.pos));
  if (id) {
    r.pos += id[0].length - 1;
    spec = { kind: 'id', id: r.string() };
  } else spec = { kind: 'value', value: r.value(0) };
  r.skip();
  if (text[r.pos] === ';') {
    r.pos++;
    r.skip();
  }
  if (r.pos < text.length) r.fail('unexpected text after the partition');
  return spec;
}

function renderValue(v: PartitionValue): string {
  if (v.kind === 'string') return quoteString(v.value);
  if (v.kind === 'number') return v.text;
  return `tuple(${v.items.map(renderValue).join(', ')})`;
}

export function renderPartition(spec: PartitionSpec): string {
  return spec.kind === 'id' ? `ID ${quoteString(spec.id)}` : renderValue(spec.value);
}

/** The canonical text of a partition literal: what a drop entry carries and what is spliced into SQL. */
export function canonicalPartition(text: string): string {
  return renderPartition(parsePartition(text));
}
