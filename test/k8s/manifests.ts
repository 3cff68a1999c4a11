import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Namespace, Service, ConfigMap, Secret } from 'kubernetes-models/v1';
import { StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { Certificate, Issuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1';

/** Reading rendered Kubernetes manifests in tests: kustomize, schema validation, pod environments. */

export const REPO = resolve(import.meta.dirname, '../..');

/** A rendered object, loosely typed: tests read the fields they check. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec?: any;
  data?: Record<string, string>;
  type?: string;
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string };
    configMapKeyRef?: { name: string; key: string };
  };
}

export function kubectlAvailable(): boolean {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** `kubectl kustomize DIR`, parsed. */
export function kustomize(dir: string): K8sObject[] {
  const text = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return parseAllDocuments(text)
    .map((doc) => doc.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

/**
 * A copy of k8s/ in a temp dir with the kind overlay's throwaway secrets made by its own
 * script, so that the overlay renders as it does before `kubectl apply -k`.
 */
export function kindOverlayCopy(): { dir: string; cleanup: () => void } {
  const root = mkdtempSync(join(tmpdir(), 'chorus-k8s-'));
  cpSync(join(REPO, 'k8s'), join(root, 'k8s'), { recursive: true, filter: (src) => !src.includes(`${join('overlays', 'kind', 'secrets')}`) });
  execFileSync('bash', [join(REPO, 'k8s/overlays/kind/make-secrets.sh'), join(root, 'k8s/overlays/kind/secrets')], { stdio: 'pipe' });
  return {
    dir: join(root, 'k8s/overlays/kind'),
    cleanup: () => {
      if (!process.env.CHORUS_KEEP_TEST_DIRS) rmSync(root, { recursive: true, force: true });
    },
  };
}

const MODELS: Record<string, { new (data: never): { validate(): void } }> = {
  'v1/Namespace': Namespace,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'batch/v1/Job': Job,
  'cert-manager.io/v1/Certificate': Certificate,
  'cert-manager.io/v1/Issuer': Issuer,
};

/** Validates against the schema of its apiVersion and kind; throws naming the object. */
export function validateObject(o: K8sObject): void {
  const Model = MODELS[`${o.apiVersion}/${o.kind}`];
  if (!Model) throw new Error(`${o.kind} ${o.metadata.name}: no schema known for ${o.apiVersion} ${o.kind}`);
  // kustomize wraps long base64 values over lines; the API server's decoder skips the newlines,
  // the schema's "byte" format does not.
  const data = o.kind === 'Secret' && o.data ? Object.fromEntries(Object.entries(o.data).map(([k, v]) => [k, v.replace(/\n/g, '')])) : o.data;
  try {
    new Model({ ...o, ...(data ? { data } : {}) } as never).validate();
  } catch (err) {
    throw new Error(`${o.kind} ${o.metadata.name} (${o.apiVersion}): ${(err as Error).message}`);
  }
}

export const ofKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);

export function named(objects: K8sObject[], kind: string, name: string): K8sObject {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} named ${name} in the rendered manifests`);
  return found;
}

/** Does a label selector (matchLabels) select a pod with these labels? */
export function selects(selector: { matchLabels?: Record<string, string> } | Record<string, string> | undefined, labels: Record<string, string>): boolean {
  const match = (selector && 'matchLabels' in selector ? selector.matchLabels : selector) as Record<string, string> | undefined;
  if (!match || Object.keys(match).length === 0) return false;
  return Object.entries(match).every(([k, v]) => labels[k] === v);
}

export function podNames(sts: K8sObject): string[] {
  return Array.from({ length: sts.spec.replicas as number }, (_, i) => `${sts.metadata.name}-${i}`);
}

/**
 * A container's environment as the kubelet would give it to pod `podName`: fieldRefs from the
 * pod, `$(VAR)` expanded from variables defined earlier in the list, Secret keys from `secret`.
 */
export function containerEnv(
  env: EnvVar[],
  pod: { name: string; namespace: string; labels: Record<string, string>; serviceLinks?: K8sObject[]; imageEnv?: Record<string, string> },
  secret: (name: string, key: string) => string,
): Record<string, string> {
  // The image's ENV first, then the Services' link variables, then the container's own env.
  const out: Record<string, string> = { ...pod.imageEnv, ...serviceLinkEnv(pod.serviceLinks ?? []) };
  for (const v of env) {
    if (v.value !== undefined) out[v.name] = v.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, ref: string) => out[ref] ?? whole);
    else if (v.valueFrom?.fieldRef) out[v.name] = fieldOf(v.valueFrom.fieldRef.fieldPath, pod);
    else if (v.valueFrom?.secretKeyRef) out[v.name] = secret(v.valueFrom.secretKeyRef.name, v.valueFrom.secretKeyRef.key);
    else throw new Error(`env ${v.name}: unsupported source`);
  }
  return out;
}

/** The variables the kubelet makes for each Service with a cluster IP (enableServiceLinks, on by default). */
export function serviceLinkEnv(services: K8sObject[]): Record<string, string> {
  const out: Record<string, string> = {};
  const ip = '10.96.0.1';
  for (const svc of services.filter((s) => s.kind === 'Service' && s.spec?.clusterIP !== 'None')) {
    const prefix = svc.metadata.name.toUpperCase().replace(/-/g, '_');
    const ports = svc.spec.ports as { name?: string; port: number; protocol?: string }[];
    out[`${prefix}_SERVICE_HOST`] = ip;
    out[`${prefix}_SERVICE_PORT`] = String(ports[0]!.port);
    out[`${prefix}_PORT`] = `tcp://${ip}:${ports[0]!.port}`;
    for (const p of ports) {
      const proto = (p.protocol ?? 'TCP').toUpperCase();
      if (p.name) out[`${prefix}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, '_')}`] = String(p.port);
      const base = `${prefix}_PORT_${p.port}_${proto}`;
      Object.assign(out, { [base]: `${proto.toLowerCase()}://${ip}:${p.port}`, [`${base}_PROTO`]: proto.toLowerCase(), [`${base}_PORT`]: String(p.port), [`${base}_ADDR`]: ip });
    }
  }
  return out;
}

function fieldOf(path: string, pod: { name: string; namespace: string; labels: Record<string, string> }): string {
  if (path === 'metadata.name') return pod.name;
  if (path === 'metadata.namespace') return pod.namespace;
  const label = /^metadata\.labels\['(.+)'\]$/.exec(path);
  if (label) {
    const value = pod.labels[label[1]!];
    if (value === undefined) throw new Error(`fieldRef ${path}: the pod has no such label`);
    return value;
  }
  throw new Error(`fieldRef ${path}: not resolved by the test`);
}

/** The value of a named container port, or the number itself. */
export function portNumber(container: { ports?: { name?: string; containerPort: number }[] }, port: string | number): number {
  if (typeof port === 'number') return port;
  const found = container.ports?.find((p) => p.name === port);
  if (!found) throw new Error(`container has no port named ${port}`);
  return found.containerPort;
}

export function decodeSecret(secret: K8sObject, key: string): string {
  const value = secret.data?.[key];
  if (value === undefined) throw new Error(`Secret ${secret.metadata.name} has no key ${key}`);
  return Buffer.from(value, 'base64').toString('utf8');
}
