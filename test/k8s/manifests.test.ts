import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import Fastify from 'fastify';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerOperationalRoutes } from '../../src/api/http-routes.js';
import { commandForm, keyValues, parseDockerfile } from '../support/dockerfile.js';
import { loadConfig, zookeeperRoot, type Config } from '../../src/config/config.js';
import { Faults } from '../../src/faults/faults.js';
import { Metrics } from '../../src/metrics/metrics.js';
import {
  REPO,
  containerEnv,
  decodeSecret,
  kindOverlayCopy,
  kubectlAvailable,
  kustomize,
  named,
  ofKind,
  podNames,
  portNumber,
  selects,
  validateObject,
  type EnvVar,
  type K8sObject,
} from './manifests.js';

/*
 * The manifests under k8s/ as `kubectl kustomize` renders them, checked offline: every object
 * against the Kubernetes schema of its apiVersion, and what the pods need to work, read from the
 * objects themselves (volumes, users, ports, peers, probes, budgets, certificates, the config
 * Chorus's own loader reads). No cluster runs here; test/k8s/kind.sh runs the kind overlay where
 * Docker exists.
 */

/** Credentials the operator creates before applying (README, "Deploying on Kubernetes"), with a value of the right shape. */
const OPERATOR_SECRETS: Record<string, Record<string, string>> = {
  'clickhouse-credentials': { password: 'example-password' },
  'chorus-admin-token': { token: 'example-token' },
  'chorus-zookeeper-auth': { auth: 'chorus:example-password' },
};

/** The Dockerfile's runtime stage, and its ENV: what the sidecar's container starts with. */
const RUNTIME_STAGE = parseDockerfile(readFileSync(join(REPO, 'Dockerfile'), 'utf8')).stages.at(-1)!;
const IMAGE_ENV = Object.fromEntries(RUNTIME_STAGE.instructions.filter((i) => i.keyword === 'ENV').flatMap((i) => [...keyValues(i.args)]));

interface Rendered {
  name: string;
  objects: K8sObject[];
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Container = any;

const hasKubectl = kubectlAvailable();
if (!hasKubectl) console.warn('kubectl is not installed: the Kubernetes manifest tests are skipped (scripts/setup.sh does not install it; see README)');

describe.skipIf(!hasKubectl)('Kubernetes manifests (k8s/)', () => {
  const overlays: Rendered[] = [];
  let kindCopy: { dir: string; cleanup: () => void };

  beforeAll(() => {
    kindCopy = kindOverlayCopy();
    overlays.push({ name: 'base', objects: kustomize(join(REPO, 'k8s/base')) });
    overlays.push({ name: 'kind', objects: kustomize(kindCopy.dir) });
    overlays.push({ name: 'prod-example', objects: kustomize(join(REPO, 'k8s/overlays/prod-example')) });
  });
  afterAll(() => kindCopy?.cleanup());

  const each = (fn: (r: Rendered) => void) => () => {
    for (const r of overlays) {
      try {
        fn(r);
      } catch (err) {
        (err as Error).message = `[${r.name}] ${(err as Error).message}`;
        throw err;
      }
    }
  };

  /** The ClickHouse StatefulSets: the ones with a `chorus` container. */
  const shards = (r: Rendered) => ofKind(r.objects, 'StatefulSet').filter((s) => containerOf(s, 'chorus'));

  const secretValue = (r: Rendered) => (name: string, key: string) => {
    const rendered = r.objects.find((o) => o.kind === 'Secret' && o.metadata.name === name);
    if (rendered) return decodeSecret(rendered, key);
    const provided = OPERATOR_SECRETS[name]?.[key];
    if (provided === undefined) throw new Error(`Secret ${name} (key ${key}) is neither in the manifests nor one the operator creates`);
    return provided;
  };

  /** Pod `ordinal` of a shard StatefulSet: its Chorus config loaded by Chorus's own loader, with the pod's environment. */
  const podConfig = (r: Rendered, sts: K8sObject, ordinal: number): { config: Config; env: Record<string, string>; pod: string } => {
    const pod = `${sts.metadata.name}-${ordinal}`;
    const chorus = containerOf(sts, 'chorus');
    const links = sts.spec.template.spec.enableServiceLinks === false ? [] : ofKind(r.objects, 'Service');
    const env = containerEnv(chorus.env as EnvVar[], { name: pod, namespace: 'test', labels: sts.spec.template.metadata.labels, serviceLinks: links, imageEnv: IMAGE_ENV }, secretValue(r));
    const configFile = env.CHORUS_CONFIG;
    expect(configFile, 'CHORUS_CONFIG').toBeTruthy();
    const mount = (chorus.volumeMounts as { name: string; mountPath: string }[]).find((m) => configFile!.startsWith(m.mountPath + '/'));
    expect(mount, `the volume holding ${configFile}`).toBeTruthy();
    const volume = volumeOf(sts, mount!.name);
    const configMap = named(r.objects, 'ConfigMap', volume.configMap.name);
    const key = relative(mount!.mountPath, configFile!);
    const text = configMap.data?.[key];
    expect(text, `ConfigMap ${configMap.metadata.name} key ${key}`).toBeTruthy();
    const dir = mkdtempSync(join(tmpdir(), 'chorus-k8s-config-'));
    try {
      writeFileSync(join(dir, 'chorus.yaml'), text!);
      // The pod's environment as `chorus serve` sees it, Services' link variables included.
      return { config: loadConfig({ file: join(dir, 'chorus.yaml'), env }), env, pod };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it('every overlay renders, and every object validates against the schema of its apiVersion', each((r) => {
    expect(r.objects.length).toBeGreaterThan(5);
    for (const o of r.objects) validateObject(o);
    const ids = r.objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(ids).size).toBe(ids.length);
  }));

  it("runs each Chorus ConfigMap through Chorus's own config loader, as every pod of its StatefulSet would", each((r) => {
    expect(shards(r).length).toBeGreaterThan(0);
    for (const sts of shards(r)) {
      for (let i = 0; i < sts.spec.replicas; i++) {
        const { config, pod } = podConfig(r, sts, i);
        expect(config.replica).toBe(pod);
      }
    }
  }));

  it('the sidecar and ClickHouse mount the same data volume at the same path, and Chorus keeps its state on it', each((r) => {
    for (const sts of shards(r)) {
      const claims = (sts.spec.volumeClaimTemplates as K8sObject[]).map((c) => c.metadata.name);
      const mountOf = (c: Container) => (c.volumeMounts as { name: string; mountPath: string }[]).filter((m) => claims.includes(m.name));
      const ch = mountOf(containerOf(sts, 'clickhouse'));
      const chorus = mountOf(containerOf(sts, 'chorus'));
      expect(ch).toHaveLength(1);
      expect(chorus).toEqual(ch);
      const { config } = podConfig(r, sts, 0);
      expect(config.dataDir.startsWith(ch[0]!.mountPath + '/')).toBe(true);
      expect(ch[0]!.mountPath).toBe('/var/lib/clickhouse');
    }
  }));

  it('ClickHouse and the sidecar both run as uid and gid 101, and the volume is theirs', each((r) => {
    for (const sts of shards(r)) {
      const pod = sts.spec.template.spec;
      expect(pod.securityContext.fsGroup).toBe(101);
      for (const name of ['clickhouse', 'chorus']) {
        const c = containerOf(sts, name);
        expect(c.securityContext?.runAsUser ?? pod.securityContext.runAsUser, `${name} uid`).toBe(101);
        expect(c.securityContext?.runAsGroup ?? pod.securityContext.runAsGroup, `${name} gid`).toBe(101);
        expect(c.securityContext?.allowPrivilegeEscalation, `${name} allowPrivilegeEscalation`).toBe(false);
        expect(c.securityContext?.capabilities?.drop, `${name} capabilities`).toEqual(['ALL']);
        // A read-only root needs a writable /tmp (SQLite's temporary files).
        if (c.securityContext?.readOnlyRootFilesystem) expect((c.volumeMounts as { mountPath: string }[]).map((m) => m.mountPath), `${name} mounts`).toContain('/tmp');
      }
    }
  }));

  it("the sidecar container runs `chorus serve` from the repository's image", each((r) => {
    const lastOf = (keyword: string) => RUNTIME_STAGE.instructions.filter((i) => i.keyword === keyword).at(-1);
    const exec = (keyword: string) => {
      const found = lastOf(keyword);
      return found ? (commandForm(found.args) as { exec: string[] }).exec : [];
    };
    for (const sts of shards(r)) {
      const chorus = containerOf(sts, 'chorus');
      // Kubernetes' command replaces ENTRYPOINT and its args replace CMD.
      const argv = [...((chorus.command as string[] | undefined) ?? exec('ENTRYPOINT')), ...((chorus.args as string[] | undefined) ?? exec('CMD'))];
      expect(argv.slice(-2), argv.join(' ')).toEqual(['chorus', 'serve']);
    }
  }));

  it("container ports and Services match the ports in Chorus's config", each((r) => {
    for (const sts of shards(r)) {
      const { config } = podConfig(r, sts, 0);
      const chorus = containerOf(sts, 'chorus');
      const clickhouse = containerOf(sts, 'clickhouse');
      expect(portNumber(chorus, 'chorus-http')).toBe(config.http.port);
      expect(portNumber(chorus, 'interserver')).toBe(config.interserver.port);
      expect(portNumber(chorus, 'grpc')).toBe(config.grpc.port);
      // What `kubectl exec POD -c chorus -- chorus status` and Prometheus reach.
      expect(podConfig(r, sts, 0).env.CHORUS_GRPC).toBe(`127.0.0.1:${config.grpc.port}`);
      expect(sts.spec.template.metadata.annotations['prometheus.io/port']).toBe(String(config.http.port));
      const chUrl = new URL(config.clickhouse.url);
      expect(['127.0.0.1', 'localhost']).toContain(chUrl.hostname);
      expect(portNumber(clickhouse, 'http')).toBe(Number(chUrl.port));

      const labels = sts.spec.template.metadata.labels;
      const headless = named(r.objects, 'Service', sts.spec.serviceName);
      expect(headless.spec.clusterIP).toBe('None');
      expect(headless.spec.publishNotReadyAddresses).toBe(true);
      expect(selects(headless.spec.selector, labels)).toBe(true);
      const target = (svc: K8sObject, port: number, container: Container) => {
        const p = (svc.spec.ports as { port: number; targetPort?: string | number }[]).find((x) => x.port === port);
        expect(p, `${svc.metadata.name} port ${port}`).toBeTruthy();
        return portNumber(container, p!.targetPort ?? p!.port);
      };
      expect(target(headless, config.grpc.port, chorus)).toBe(config.grpc.port);
      expect(target(headless, config.interserver.port, chorus)).toBe(config.interserver.port);

      // The client Service: Chorus's HTTP port on this shard's pods only.
      const clients = ofKind(r.objects, 'Service').filter((s) => s.spec.clusterIP !== 'None' && selects(s.spec.selector, labels));
      expect(clients.map((s) => s.metadata.name)).toEqual([`chorus-${labels['chorus.io/shard']}`]);
      expect(target(clients[0]!, config.http.port, chorus)).toBe(config.http.port);
      for (const other of shards(r).filter((s) => s !== sts)) expect(selects(clients[0]!.spec.selector, other.spec.template.metadata.labels)).toBe(false);
    }
  }));

  it("each Chorus config's peers are exactly its StatefulSet's pods, by their stable DNS names", each((r) => {
    for (const sts of shards(r)) {
      for (let i = 0; i < sts.spec.replicas; i++) {
        const { config } = podConfig(r, sts, i);
        const expected = podNames(sts).map((name) => ({
          name,
          grpc: `${name}.${sts.spec.serviceName}:${config.grpc.port}`,
          interserver: `https://${name}.${sts.spec.serviceName}:${config.interserver.port}`,
        }));
        expect(config.peers).toEqual(expected);
      }
    }
  }));

  it("ZooKeeper's connect string lists the ZooKeeper StatefulSet's pods on its client port", each((r) => {
    const zk = named(r.objects, 'StatefulSet', 'zookeeper');
    const client = portNumber(containerOf(zk, 'zookeeper'), 'client');
    for (const sts of shards(r)) {
      const { config } = podConfig(r, sts, 0);
      expect(config.zookeeper.connect.split(',')).toEqual(podNames(zk).map((p) => `${p}.${zk.spec.serviceName}:${client}`));
    }
    const servers = (containerOf(zk, 'zookeeper').env as EnvVar[]).find((e) => e.name === 'ZOO_SERVERS')!.value!.trim().split(/\s+/);
    expect(servers).toEqual(podNames(zk).map((p, i) => `server.${i + 1}=${p}.${zk.spec.serviceName}:2888:3888;${client}`));
  }));

  it('probes hit endpoints that Chorus and ClickHouse serve', async () => {
    const app = Fastify();
    registerOperationalRoutes(app, { metrics: new Metrics(), readiness: async () => ({ ready: true, reasons: [] }), faults: new Faults(false), status: () => ({}) });
    for (const r of overlays) {
      for (const sts of shards(r)) {
        const { config } = podConfig(r, sts, 0);
        const chorus = containerOf(sts, 'chorus');
        const probes = { startup: chorus.startupProbe, liveness: chorus.livenessProbe, readiness: chorus.readinessProbe };
        expect(probes.readiness.httpGet.path).toBe('/readyz');
        expect(probes.liveness.httpGet.path).toBe('/healthz');
        for (const [kind, probe] of Object.entries(probes)) {
          expect(portNumber(chorus, probe.httpGet.port), `${r.name} chorus ${kind} probe port`).toBe(config.http.port);
          const res = await app.inject({ method: 'GET', url: probe.httpGet.path });
          expect(res.statusCode, `${r.name} chorus ${kind} probe ${probe.httpGet.path}`).toBe(200);
        }
        const clickhouse = containerOf(sts, 'clickhouse');
        for (const probe of [clickhouse.startupProbe, clickhouse.livenessProbe, clickhouse.readinessProbe]) {
          expect(probe.httpGet.path).toBe('/ping');
          expect(portNumber(clickhouse, probe.httpGet.port)).toBe(portNumber(clickhouse, 'http'));
        }
      }
    }
    await app.close();
  });

  it('each PodDisruptionBudget selects exactly the pods of its StatefulSet and lets one go at a time', each((r) => {
    const workloads = [...ofKind(r.objects, 'StatefulSet'), ...ofKind(r.objects, 'Job')];
    const sets = ofKind(r.objects, 'StatefulSet');
    for (const pdb of ofKind(r.objects, 'PodDisruptionBudget')) {
      const selected = workloads.filter((w) => selects(pdb.spec.selector, w.spec.template.metadata.labels));
      expect(selected.map((w) => w.metadata.name), `PDB ${pdb.metadata.name}`).toEqual([pdb.metadata.name]);
      expect(pdb.spec.maxUnavailable).toBe(1);
    }
    for (const sts of sets) expect(ofKind(r.objects, 'PodDisruptionBudget').some((p) => selects(p.spec.selector, sts.spec.template.metadata.labels)), `PDB for ${sts.metadata.name}`).toBe(true);
  }));

  it('replicas of a shard, and ZooKeeper servers, never share a node', each((r) => {
    for (const sts of ofKind(r.objects, 'StatefulSet')) {
      const terms = sts.spec.template.spec.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
      expect(terms, `anti-affinity of ${sts.metadata.name}`).toHaveLength(1);
      expect(terms[0].topologyKey).toBe('kubernetes.io/hostname');
      expect(selects(terms[0].labelSelector, sts.spec.template.metadata.labels)).toBe(true);
      for (const other of ofKind(r.objects, 'StatefulSet').filter((s) => s !== sts)) {
        expect(selects(terms[0].labelSelector, other.spec.template.metadata.labels), `${sts.metadata.name} avoids ${other.metadata.name}`).toBe(false);
      }
    }
  }));

  it("the sidecar's TLS files are its own pod's certificate, whose name is the pod's", each((r) => {
    for (const sts of shards(r)) {
      const chorus = containerOf(sts, 'chorus');
      const tlsMount = (chorus.volumeMounts as { name: string; mountPath: string }[]).find((m) => m.mountPath === '/etc/chorus/tls')!;
      const sources = volumeOf(sts, tlsMount.name).projected.sources as { secret: { name: string; items: { key: string; path: string }[] } }[];
      for (let i = 0; i < sts.spec.replicas; i++) {
        const { env, pod } = podConfig(r, sts, i);
        for (const [variable, key] of [['CHORUS_TLS_CERT', 'tls.crt'], ['CHORUS_TLS_KEY', 'tls.key'], ['CHORUS_TLS_CA', 'ca.crt']] as const) {
          const path = relative(tlsMount.mountPath, env[variable]!);
          const source = sources.find((s) => s.secret.items.some((item) => item.path === path));
          expect(source, `${pod} ${variable}=${env[variable]}`).toBeTruthy();
          expect(source!.secret.name).toBe(`${pod}-tls`);
          expect(source!.secret.items.find((item) => item.path === path)!.key).toBe(key);
        }
        const secret = r.objects.find((o) => o.kind === 'Secret' && o.metadata.name === `${pod}-tls`);
        const certificate = ofKind(r.objects, 'Certificate').find((c) => c.spec.secretName === `${pod}-tls`);
        if (secret) {
          // The kind overlay's throwaway certificates, made by its make-secrets.sh.
          expect(secret.type).toBe('kubernetes.io/tls');
          const cert = new X509Certificate(decodeSecret(secret, 'tls.crt'));
          expect(cert.subject).toContain(`CN=${pod}`);
          expect(cert.checkHost(pod)).toBe(pod);
          expect(cert.verify(new X509Certificate(decodeSecret(secret, 'ca.crt')).publicKey)).toBe(true);
        } else if (certificate) {
          expect(certificate.spec.commonName).toBe(pod);
          expect(certificate.spec.dnsNames).toContain(pod);
          expect(certificate.spec.usages).toEqual(expect.arrayContaining(['server auth', 'client auth']));
          const issuer = named(r.objects, 'Issuer', certificate.spec.issuerRef.name);
          const ca = ofKind(r.objects, 'Certificate').find((c) => c.spec.secretName === issuer.spec.ca.secretName);
          expect(ca?.spec.isCA, `the CA behind ${issuer.metadata.name}`).toBe(true);
        } else {
          expect(r.name, `${pod}-tls is made by nothing in this overlay`).toBe('base');
        }
      }
    }
  }));

  it('every Secret a pod reads is in the manifests, made by cert-manager, or one of the documented credentials', each((r) => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    for (const name of Object.keys(OPERATOR_SECRETS)) expect(readme, `README documents Secret ${name}`).toContain(name);
    for (const w of [...ofKind(r.objects, 'StatefulSet'), ...ofKind(r.objects, 'Job')]) {
      const pod = w.spec.template.spec;
      const refs = [
        ...(pod.containers as Container[]).flatMap((c) => ((c.env ?? []) as EnvVar[]).flatMap((e) => (e.valueFrom?.secretKeyRef ? [e.valueFrom.secretKeyRef.name] : []))),
        ...((pod.volumes ?? []) as Container[]).flatMap((v) => [v.secret?.secretName, ...((v.projected?.sources ?? []) as Container[]).map((s) => s.secret?.name)]).filter(Boolean),
      ] as string[];
      for (const ref of refs) {
        const made = r.objects.some((o) => (o.kind === 'Secret' && o.metadata.name === ref) || (o.kind === 'Certificate' && o.spec.secretName === ref));
        const operator = ref in OPERATOR_SECRETS;
        const tls = r.name === 'base' && /-tls$/.test(ref);
        expect(made || operator || tls, `${w.metadata.name} reads Secret ${ref}`).toBe(true);
      }
    }
  }));

  it('shards of one overlay use different Chorus shard names, so different ZooKeeper znodes', each((r) => {
    const roots = shards(r).map((sts) => podConfig(r, sts, 0).config).map((c) => ({ shard: c.shard, root: zookeeperRoot(c) }));
    expect(new Set(roots.map((x) => x.shard)).size).toBe(roots.length);
    expect(new Set(roots.map((x) => x.root)).size).toBe(roots.length);
    for (const sts of shards(r)) expect(podConfig(r, sts, 0).config.shard).toBe(sts.spec.template.metadata.labels['chorus.io/shard']);
    if (r.name === 'prod-example') expect(roots.map((x) => x.shard).sort()).toEqual(['shard1', 'shard2']);
  }));

  it("the pod's grace period covers Chorus's shutdown and ClickHouse's after it", each((r) => {
    for (const sts of shards(r)) {
      const { config } = podConfig(r, sts, 0);
      const graceS = sts.spec.template.spec.terminationGracePeriodSeconds as number;
      // `chorus serve` exits at the latest shutdownGraceMs + 5 s after SIGTERM; ClickHouse, held
      // by its preStop hook until then, keeps 30 s of its own.
      expect(graceS * 1000).toBeGreaterThanOrEqual(config.shutdownGraceMs + 5000 + 30_000);
      const preStop = containerOf(sts, 'clickhouse').lifecycle.preStop.exec.command.join(' ');
      expect(preStop).toContain(`/dev/tcp/127.0.0.1/${config.grpc.port}`);
    }
  }));

  it('the schema Job and the Distributed cluster cover every replica of every shard', each((r) => {
    const servers = shards(r).map((sts) => podNames(sts).map((p) => `${p}.${sts.spec.serviceName}:${portNumber(containerOf(sts, 'clickhouse'), 'native')}`));
    const schema = named(r.objects, 'ConfigMap', 'chorus-schema');
    expect(schema.data!.hosts!.trim().split('\n')).toEqual(servers.flat());
    const cluster = named(r.objects, 'ConfigMap', 'clickhouse-cluster').data!['cluster.xml']!;
    const remote = [...cluster.matchAll(/<shard>([\s\S]*?)<\/shard>/g)].map((m) => [...m[1]!.matchAll(/<host>([^<]+)<\/host><port>(\d+)<\/port>/g)].map((h) => `${h[1]}:${h[2]}`));
    expect(remote).toEqual(servers);
    expect(schema.data!['schema.sql']).toMatch(/Distributed\(chorus,/);
    expect(cluster).toContain('<chorus>');

    const job = named(r.objects, 'Job', 'chorus-schema');
    const container = job.spec.template.spec.containers[0];
    expect(container.image).toBe(containerOf(shards(r)[0]!, 'clickhouse').image);
    expect(container.command.join(' ')).toContain('/schema/run.sh');
  }));

  it('images are pinned, ClickHouse to a release Chorus supports (23.8 and later)', each((r) => {
    const images = [...ofKind(r.objects, 'StatefulSet'), ...ofKind(r.objects, 'Job')].flatMap((w) => (w.spec.template.spec.containers as Container[]).map((c) => c.image as string));
    for (const image of images) {
      const tag = /:([^/:]+)$/.exec(image)?.[1];
      expect(tag && tag !== 'latest', `${image} is pinned`).toBeTruthy();
    }
    for (const image of images.filter((i) => i.startsWith('clickhouse/clickhouse-server:'))) {
      const [major, minor] = image.split(':')[1]!.split('.').map(Number);
      expect(major! * 100 + minor!).toBeGreaterThanOrEqual(2308);
    }
  }));

  it('the shell scripts the manifests carry pass shellcheck', () => {
    const dir = mkdtempSync(join(tmpdir(), 'chorus-k8s-sh-'));
    try {
      const scripts: string[] = [];
      const prod = overlays.find((o) => o.name === 'prod-example')!;
      writeFileSync(join(dir, 'run.sh'), named(prod.objects, 'ConfigMap', 'chorus-schema').data!['run.sh']!);
      scripts.push(join(dir, 'run.sh'));
      // Container commands and exec probes given to bash -c.
      let n = 0;
      for (const w of [...ofKind(prod.objects, 'StatefulSet'), ...ofKind(prod.objects, 'Job')]) {
        for (const c of w.spec.template.spec.containers as Container[]) {
          const snippets = [c.command, c.readinessProbe?.exec?.command, c.livenessProbe?.exec?.command, c.lifecycle?.preStop?.exec?.command]
            .filter((cmd): cmd is string[] => Array.isArray(cmd) && cmd[0] === 'bash' && cmd[1] === '-c')
            .map((cmd) => cmd[2]!);
          for (const s of snippets) {
            const file = join(dir, `snippet-${n++}.sh`);
            writeFileSync(file, `#!/usr/bin/env bash\n${s}\n`);
            scripts.push(file);
          }
        }
      }
      expect(n).toBeGreaterThanOrEqual(4);
      execFileSync('shellcheck', scripts, { stdio: 'pipe' });
    } catch (err) {
      const e = err as { stdout?: Buffer; message: string };
      throw new Error(`shellcheck: ${e.stdout?.toString() || e.message}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the kind cluster has a worker for each replica that anti-affinity keeps apart", () => {
    const kind = overlays.find((o) => o.name === 'kind')!;
    const cluster = parseYaml(readFileSync(join(REPO, 'k8s/overlays/kind/kind-cluster.yaml'), 'utf8')) as { kind: string; apiVersion: string; nodes: { role: string }[] };
    expect(cluster.kind).toBe('Cluster');
    expect(cluster.apiVersion).toBe('kind.x-k8s.io/v1alpha4');
    const workers = cluster.nodes.filter((n) => n.role === 'worker').length;
    for (const sts of ofKind(kind.objects, 'StatefulSet')) expect(workers).toBeGreaterThanOrEqual(sts.spec.replicas);
    expect(ofKind(kind.objects, 'StatefulSet').find((s) => s.metadata.name === 'clickhouse-shard1')?.spec.replicas).toBe(3);
    for (const o of kind.objects.filter((x) => x.kind !== 'Namespace')) expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBe('chorus');
  });
});

function containerOf(w: K8sObject, name: string): Container {
  return (w.spec?.template?.spec?.containers as Container[] | undefined)?.find((c) => c.name === name);
}

function volumeOf(w: K8sObject, name: string): Container {
  const v = (w.spec.template.spec.volumes as Container[]).find((x) => x.name === name);
  if (!v) throw new Error(`${w.metadata.name} has no volume ${name}`);
  return v;
}
