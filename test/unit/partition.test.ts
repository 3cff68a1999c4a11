import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalPartition, parsePartition, renderPartition, type PartitionValue } from '../../src/clickhouse/partition.js';

describe('partition literals', () => {
  it('re-writes literals in one canonical form', () => {
    expect(canonicalPartition('202611')).toBe('202611');
    expect(canonicalPartition("'2026-11-01';")).toBe("'2026-11-01'");
    expect(canonicalPartition("ID '202611'")).toBe("ID '202611'");
    expect(canonicalPartition("id'a\\'b'")).toBe("ID 'a\\'b'");
    expect(canonicalPartition("(1, 'a')")).toBe("tuple(1, 'a')");
    expect(canonicalPartition("tuple( 1 ,'a' )")).toBe("tuple(1, 'a')");
    expect(canonicalPartition('tuple()')).toBe('tuple()');
    expect(canonicalPartition('(7)')).toBe('7');
    expect(canonicalPartition("'it''s'")).toBe("'it\\'s'");
  });

  it('refuses expressions, comments and second statements', () => {
    for (const text of [
      "202611; DROP TABLE t",
      '202611 -- x',
      "'a' /* x */",
      'toYYYYMM(now())',
      '1 + 1',
      "(SELECT 1)",
      "'unterminated",
      '',
      'tuple(1,',
      '((((((((((1))))))))))',
    ]) {
      expect(() => parsePartition(text), text).toThrow(expect.objectContaining({ code: 'BAD_QUERY' }));
    }
  });

  const value: fc.Arbitrary<PartitionValue> = fc.letrec<{ v: PartitionValue }>((tie) => ({
    v: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.string({ unit: 'binary', maxLength: 20 }).map((value) => ({ kind: 'string' as const, value })),
      fc.integer().map((n) => ({ kind: 'number' as const, text: String(n) })),
      fc.array(tie('v'), { maxLength: 3 }).map((items) => ({ kind: 'tuple' as const, items })),
    ),
  })).v;

  it('reads back what it writes, and writing is idempotent', () => {
    fc.assert(
      fc.property(value, (v) => {
        const text = renderPartition({ kind: 'value', value: v });
        if (text.length > 4096) return;
        expect(canonicalPartition(text)).toBe(text);
      }),
    );
  });

  it('whatever the input, the output is a literal or the input is refused', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 60 }), (text) => {
        let out: string;
        try {
          out = canonicalPartition(text);
        } catch (err) {
          expect((err as { code?: string }).code).toBe('BAD_QUERY');
          return;
        }
        // Canonical output holds no statement separator or comment outside a string literal.
        const outside = out.replace(/'(?:[^'\\]|\\.)*'/g, "''");
        expect(outside).not.toMatch(/;|--|\/\*|#/);
        expect(canonicalPartition(out)).toBe(out);
      }),
    );
  });
});
