import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { envVarFor, loadConfig, zookeeperRoot } from '../../src/config/config.js';

const write = (text: string) => {
  const file = join(mkdtempSync(join(tmpdir(), 'chorus-config-')), 'chorus.yaml');
  writeFileSync(file, text);
  return file;
};

describe('config', () => {
  it('fills named defaults, nested ones included', () => {
    const config = loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: {} });
    expect(config.http.port).toBe(8124);
    expect(config.interserver.port).toBe(9010);
    expect(config.grpc.port).toBe(9100);
    expect(config.zookeeper.dedupWindow).toBe(1000);
    expect(config.clickhouse.databases).toEqual(['default']);
    expect(zookeeperRoot(config)).toBe('/chorus/default/shard1');
  });

  it('lets CHORUS_* environment variables win over the file', () => {
    const config = loadConfig({
      file: write('replica: r1\ndataDir: /tmp/x\nhttp:\n  port: 1\n'),
      env: { CHORUS_HTTP_PORT: '2', CHORUS_CLICKHOUSE_DATABASES: 'a,b', CHORUS_ZOOKEEPER_SESSION_TIMEOUT_MS: '5000' },
    });
    expect(config.http.port).toBe(2);
    expect(config.clickhouse.databases).toEqual(['a', 'b']);
    expect(config.zookeeper.sessionTimeoutMs).toBe(5000);
    expect(envVarFor(['zookeeper', 'sessionTimeoutMs'])).toBe('CHORUS_ZOOKEEPER_SESSION_TIMEOUT_MS');
  });

  it('fails on a wrong type, naming the key', () => {
    expect(() => loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\nhttp:\n  port: eighty\n'), env: {} })).toThrow(/http\.port/);
  });

  it("ignores the variables Kubernetes makes for a Service named chorus-*, and still refuses a misspelt key", () => {
    const links = {
      CHORUS_SHARD1_SERVICE_HOST: '10.96.0.10',
      CHORUS_SHARD1_SERVICE_PORT: '8124',
      CHORUS_SHARD1_SERVICE_PORT_CHORUS_HTTP: '8124',
      CHORUS_SHARD1_PORT: 'tcp://10.96.0.10:8124',
      CHORUS_SHARD1_PORT_8124_TCP: 'tcp://10.96.0.10:8124',
      CHORUS_SHARD1_PORT_8124_TCP_PROTO: 'tcp',
      CHORUS_SHARD1_PORT_8124_TCP_PORT: '8124',
      CHORUS_SHARD1_PORT_8124_TCP_ADDR: '10.96.0.10',
      // A Service named chorus-http: its _PORT variable has a config key's name.
      CHORUS_HTTP_SERVICE_HOST: '10.96.0.11',
      CHORUS_HTTP_PORT: 'tcp://10.96.0.11:80',
    };
    const config = loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: links });
    expect(config.http.port).toBe(8124);
    expect(() => loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: { ...links, CHORUS_HTPP_PORT: '1' } })).toThrow(/CHORUS_HTPP_PORT/);
    expect(() => loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: { CHORUS_SHARD1_PORT: 'tcp://10.96.0.10:8124' } })).toThrow(/CHORUS_SHARD1_PORT/);
    expect(loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: { ...links, CHORUS_HTTP_PORT: '9999' } }).http.port).toBe(9999);
  });

  it('fails on an unknown key, naming it', () => {
    expect(() => loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\nzookeeper:\n  conect: x\n'), env: {} })).toThrow(/zookeeper\.conect/);
    expect(() => loadConfig({ file: write('replica: r1\ndataDir: /tmp/x\n'), env: { CHORUS_HTTP_PROT: '1' } })).toThrow(/CHORUS_HTTP_PROT/);
  });

  it('fails with a stable code when required keys are missing', () => {
    expect(() => loadConfig({ env: {} })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
  });
});
