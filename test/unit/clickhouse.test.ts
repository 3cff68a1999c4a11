import { describe, expect, it } from 'vitest';
import { Dialect, parsePartName } from '../../src/clickhouse/dialect.js';
import { ClickHouseQueryError, exceptionInBody, isServerSideFailure, parseClickHouseError } from '../../src/clickhouse/http.js';
import { isLocalDiskType } from '../../src/clickhouse/catalog.js';
import { assertSafeFileName } from '../../src/parts/files.js';
import { httpException } from '../../src/dev/chdb/errors.js';

describe('Dialect', () => {
  it('reads the version and answers per release', () => {
    const old = new Dialect('18.16.1');
    expect(old.tableDataPaths).toBe('[data_path]');
    expect(old.hasDetachPart).toBe(false);
    expect(old.hasDisks).toBe(false);
    expect(old.stagingSettings).toEqual({});
    const lts = new Dialect('23.8.16.40');
    expect(lts.tableDataPaths).toBe('data_paths');
    expect(lts.hasDetachPart).toBe(true);
    expect(lts.stagingSettings).toEqual({ insert_deduplicate: '0', async_insert: '0' });
    expect(new Dialect('26.7.2.1').defaultDatabaseEngine).toBe('Atomic');
  });

  it('refuses a version it cannot read', () => {
    expect(() => new Dialect('garbage')).toThrow(/version/);
  });
});

describe('parsePartName', () => {
  it('reads four- and five-field names', () => {
    expect(parsePartName('202611_1_3_1')).toEqual({ partitionId: '202611', minBlock: 1, maxBlock: 3, level: 1, mutation: undefined });
    expect(parsePartName('all_2_2_0_5')).toEqual({ partitionId: 'all', minBlock: 2, maxBlock: 2, level: 0, mutation: 5 });
    expect(parsePartName('-1_4_4_0')?.partitionId).toBe('-1');
  });

  it('ignores what is not a part', () => {
    // ... and the pre-2017 syntax's `mindate_maxdate_min_max_level`, which must not pass for a mutated part.
    for (const name of ['detached', 'tmp_insert_202611_1_1_0', 'delete_tmp_all_1_1_0', 'format_version.txt', 'all_1_1', '20261101_20261130_1_1_0']) {
      expect(parsePartName(name)).toBeUndefined();
    }
  });
});

describe("ClickHouse's error text", () => {
  it('reads the 18.16 format', () => {
    const e = parseClickHouseError("Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n");
    expect(e).toEqual({ code: 60, name: undefined, message: "DB::Exception: Table default.x doesn't exist." });
  });

  it('reads the 21.11+ format, with the name and without the version', () => {
    const e = parseClickHouseError('Code: 60. DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)\n');
    expect(e).toEqual({ code: 60, name: 'UNKNOWN_TABLE', message: 'DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE)' });
  });

  it('takes the code from X-ClickHouse-Exception-Code when there is one', () => {
    expect(parseClickHouseError('something went wrong', '241').code).toBe(241);
  });

  it("tells a refusal for the server's own state (disk full, memory, parts) from one for the rows sent", () => {
    const refusal = (body: string) => {
      const e = parseClickHouseError(body);
      return new ClickHouseQueryError(e.code, e.message, e.name);
    };
    // What 18.16 answered when the chaos suite filled a replica's disk.
    expect(isServerSideFailure(refusal('Poco::Exception. Code: 1000, e.code() = 0, e.displayText() = Cannot write file: /data/r3/clickhouse-server.err.log, e.what() = Cannot write file'))).toBe(true);
    expect(isServerSideFailure(refusal('Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE) (version 23.8.1.1)'))).toBe(true);
    expect(isServerSideFailure(refusal('Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS) (version 24.3.1.1)'))).toBe(true);
    expect(isServerSideFailure(refusal('Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED) (version 26.7.2.1)'))).toBe(true);
    expect(isServerSideFailure(refusal("Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \\t before: x, e.what() = DB::Exception"))).toBe(false);
    expect(isServerSideFailure(refusal('Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR) (version 23.8.1.1)'))).toBe(false);
    expect(isServerSideFailure(refusal('Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH) (version 26.7.2.1)'))).toBe(false);
    // The client's rows, even when they quote a disk error or span too many partitions.
    expect(isServerSideFailure(refusal("Code: 27. DB::Exception: Cannot parse input: expected '\\t' before: 'No space left on device'. (CANNOT_PARSE_INPUT_ASSERTION_FAILED) (version 23.8.1.1)"))).toBe(false);
    expect(isServerSideFailure(refusal('Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS) (version 23.8.1.1)'))).toBe(false);
  });

  it('finds an exception written after rows in a 200 response', () => {
    expect(exceptionInBody('1\n2\nCode: 395. DB::Exception: Value passed to throwIf is non-zero. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) (version 23.8.1.1)\n')).toMatch(/^Code: 395\./);
    expect(exceptionInBody('1\n2\n__exception__\r\nabcdefgh\r\nCode: 395. DB::Exception: boom. (X) (version 25.1.1.1)\r\n60 abcdefgh\r\n__exception__\r\n')).toMatch(/^Code: 395\./);
    expect(exceptionInBody('{"a":1}\n{"a":2}\n')).toBeUndefined();
  });

  it('is answered by the chdb front with the status ClickHouse gives the name', () => {
    expect(httpException(60, 'Code: 60. DB::Exception: nope. (UNKNOWN_TABLE)', '26.7.2.1')).toEqual({
      status: 404,
      code: 60,
      body: 'Code: 60. DB::Exception: nope. (UNKNOWN_TABLE) (version 26.7.2.1)\n',
    });
    expect(httpException(62, 'Syntax error. (SYNTAX_ERROR)', '26.7.2.1').status).toBe(400);
    expect(httpException(1002, 'boom', '26.7.2.1').status).toBe(500);
  });
});

describe('part file names', () => {
  it("accept a part's own files and one level of projection", () => {
    for (const name of ['checksums.txt', 'data.bin', 'minmax_day.idx', 'p1.proj/data.bin', 'p1.proj/checksums.txt']) {
      expect(() => assertSafeFileName(name)).not.toThrow();
    }
  });

  it('refuse anything a path could escape by', () => {
    for (const name of ['../x', 'a/b', 'p.proj/../x', 'p.proj/q.proj/x', '/etc/passwd', '.hidden', 'p.proj/', '']) {
      expect(() => assertSafeFileName(name), name).toThrow(/invalid file name|invalid file/);
    }
  });
});

describe('disk types', () => {
  it('takes only local disks', () => {
    expect(isLocalDiskType('local')).toBe(true);
    expect(isLocalDiskType('Local')).toBe(true);
    for (const t of ['s3', 'ObjectStorage', 'hdfs', 'web', 'encrypted', 'cache']) expect(isLocalDiskType(t)).toBe(false);
  });
});

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { ClickHouseHttp } from '../../src/clickhouse/http.js';
import { clientCredentials } from '../../src/insert/clients.js';

describe('ClickHouseHttp.request: what reaches ClickHouse', () => {
  /** A stand-in for ClickHouse's HTTP port that records what each request carried. */
  const withRecorder = async (fn: (url: string, seen: Array<{ url: URL; headers: http.IncomingHttpHeaders }>) => Promise<void>) => {
    const seen: Array<{ url: URL; headers: http.IncomingHttpHeaders }> = [];
    const server = http.createServer((req, res) => {
      seen.push({ url: new URL(req.url!, 'http://x'), headers: req.headers });
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await fn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen);
    } finally {
      server.close();
    }
  };

  it('property: no parameter stands in for the statement, and a client’s credentials replace Chorus’s', async () => {
    await withRecorder(async (url, seen) => {
      const ch = new ClickHouseHttp({ url, user: 'chorus', password: 'chorus-secret', requestTimeoutMs: 5000 });
      try {
        await fc.assert(
          fc.asyncProperty(fc.dictionary(fc.oneof(fc.constant('query'), fc.string()), fc.string()), fc.string({ unit: 'grapheme' }).filter((u) => !u.includes(':')), fc.string({ unit: 'grapheme' }), async (params, user, password) => {
            seen.length = 0;
            await ch.request('INSERT INTO `_chorus`.`s` FORMAT TSV', { params, body: '', as: { user, password } });
            expect(seen[0]!.url.searchParams.getAll('query')).toEqual(['INSERT INTO `_chorus`.`s` FORMAT TSV']);
            // Read back the way ClickHouse reads it: its headers, else basic auth.
            expect(clientCredentials(seen[0]!.headers, new URLSearchParams())).toEqual({ user, password });
          }),
          { numRuns: 50 },
        );
        await ch.request('SELECT 1');
        expect(seen.at(-1)!.headers['x-clickhouse-user']).toBe('chorus');
      } finally {
        ch.close();
      }
    });
  });

  it('a client’s credentials are read as ClickHouse reads them', () => {
    const params = new URLSearchParams({ user: 'u', password: 'p' });
    expect(clientCredentials({ 'x-clickhouse-user': 'h', 'x-clickhouse-key': 'k', authorization: 'Basic ' + Buffer.from('b:c').toString('base64') }, params)).toEqual({ user: 'h', password: 'k' });
    expect(clientCredentials({ authorization: 'Basic ' + Buffer.from('b:c:d').toString('base64') }, params)).toEqual({ user: 'b', password: 'c:d' });
    expect(clientCredentials({}, params)).toEqual({ user: 'u', password: 'p' });
    expect(clientCredentials({}, new URLSearchParams())).toEqual({ user: 'default', password: '' });
  });

  it('asks 18.16 with statements that change nothing, and 24.7+ with CHECK GRANT and the readonly setting', () => {
    expect(new Dialect('18.16.1').grantProbes('insert', '`d`.`t`', 'u')).toEqual([{ sql: 'INSERT INTO `d`.`t` FORMAT TabSeparated' }]);
    expect(new Dialect('18.16.1').grantProbes('truncate', '`d`.`t`', 'u')[0]!.sql).toBe("ALTER TABLE `d`.`t` DROP PARTITION ID 'chorusgrantprobe'");
    expect(new Dialect('26.7.2.1').grantProbes('truncate', '`d`.`t`', 'u').map((p) => [p.sql, p.granted])).toEqual([
      ['CHECK GRANT TRUNCATE ON `d`.`t`', '1'],
      ["SELECT getSetting('readonly')", '0'],
    ]);
  });
});
