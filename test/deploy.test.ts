/**
 * deploy/kubernetes.yaml: every document is valid against the Kubernetes schemas, every pod
 * meets the Pod Security Standard "restricted", and the choices the manifest's comments
 * promise (migrate Job, startup probe, spread, disruption budget, one secret) are there.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { Job, type IJob } from 'kubernetes-models/batch/v1/Job';
import { PodDisruptionBudget, type IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Secret, type ISecret } from 'kubernetes-models/v1/Secret';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import { parseDuration } from '../src/duration.js';

const text = readFileSync(new URL('../deploy/kubernetes.yaml', import.meta.url), 'utf8');
// YAML 1.1, as the Kubernetes API server reads it (an unquoted `yes` or `on` is a boolean there).
const parsed = parseAllDocuments(text, { version: '1.1' });
const documents = Array.from(parsed, (doc) => ({ errors: [...doc.errors, ...doc.warnings].map((e) => e.message), value: doc.toJS() as unknown }));

/** apiVersion/kind → its schema. A kind not listed here fails the test: add its model. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/Secret': Secret,
  'batch/v1/Job': Job,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

interface Resource {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string };
}
const resources = documents.map((doc) => (doc.value ?? {}) as Resource);
const all = <T>(kind: string) => resources.filter((r) => r.kind === kind) as T[];
const envValue = (env: { name: string; value?: string }[] | undefined, name: string) => env?.find((e) => e.name === name)?.value;

/** Volume sources the "restricted" profile allows. */
const RESTRICTED_VOLUMES = new Set(['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret']);

/** What keeps `pod` from the Pod Security Standard "restricted" (and from a writable /tmp): one line each. */
export function restrictedViolations(where: string, pod: IPodSpec): string[] {
  const found: string[] = [];
  const pc = pod.securityContext ?? {};
  if (pc.runAsNonRoot !== true) found.push(`${where}: pod runAsNonRoot is not true`);
  if (pc.runAsUser !== 1000) found.push(`${where}: pod runAsUser is not 1000`);
  if (pc.runAsGroup !== 1000) found.push(`${where}: pod runAsGroup is not 1000`);
  if (pc.seccompProfile?.type !== 'RuntimeDefault') found.push(`${where}: pod seccompProfile is not RuntimeDefault`);
  if (pod.hostNetwork || pod.hostPID || pod.hostIPC) found.push(`${where}: pod shares a host namespace`);
  for (const volume of pod.volumes ?? []) {
    const sources = Object.keys(volume).filter((key) => key !== 'name' && !RESTRICTED_VOLUMES.has(key));
    if (sources.length > 0) found.push(`${where}: volume ${volume.name} is of a type not allowed (${sources.join(', ')})`);
  }
  const emptyDirs = new Set((pod.volumes ?? []).filter((v) => v.emptyDir).map((v) => v.name));
  for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
    const at = `${where} container ${c.name}`;
    const sc = c.securityContext ?? {};
    if (sc.allowPrivilegeEscalation !== false) found.push(`${at}: allowPrivilegeEscalation is not false`);
    if (sc.privileged) found.push(`${at}: privileged`);
    if (!sc.capabilities?.drop?.includes('ALL')) found.push(`${at}: capabilities do not drop ALL`);
    const added = (sc.capabilities?.add ?? []).filter((cap) => cap !== 'NET_BIND_SERVICE');
    if (added.length > 0) found.push(`${at}: adds capabilities ${added.join(', ')}`);
    if (sc.readOnlyRootFilesystem !== true) found.push(`${at}: readOnlyRootFilesystem is not true`);
    if (sc.runAsNonRoot !== true) found.push(`${at}: runAsNonRoot is not true`);
    if (sc.runAsUser === 0) found.push(`${at}: runAsUser is 0`);
    if (sc.seccompProfile?.type !== 'RuntimeDefault') found.push(`${at}: seccompProfile is not RuntimeDefault`);
    if (!c.volumeMounts?.some((m) => m.mountPath === '/tmp' && emptyDirs.has(m.name))) found.push(`${at}: no emptyDir at /tmp`);
  }
  return found;
}

describe('deploy/kubernetes.yaml', () => {
  it('parses as YAML documents, none empty', () => {
    expect(documents.length).toBeGreaterThanOrEqual(4);
    expect(documents.flatMap((doc) => doc.errors)).toEqual([]);
    for (const doc of documents) expect(doc.value).toBeTypeOf('object');
  });

  it.each(resources.map((r) => [`${r.kind} ${r.metadata?.name}`, r] as const))('%s is valid against the Kubernetes schema', (_, resource) => {
    const Model = MODELS[`${resource.apiVersion}/${resource.kind}`];
    expect(Model, `no schema for ${resource.apiVersion} ${resource.kind}: add its kubernetes-models class to MODELS`).toBeDefined();
    expect(() => new Model!(resource as never).validate()).not.toThrow();
  });

  it('runs every pod under the Pod Security Standard "restricted", with a writable /tmp', () => {
    const pods = [
      ...all<IJob>('Job').map((job) => [`Job ${job.metadata?.name}`, job.spec?.template.spec] as const),
      ...all<IDeployment>('Deployment').map((d) => [`Deployment ${d.metadata?.name}`, d.spec?.template.spec] as const),
    ];
    expect(pods).toHaveLength(2);
    for (const [where, pod] of pods) {
      expect(pod, where).toBeDefined();
      expect(restrictedViolations(where, pod!)).toEqual([]);
    }
  });

  it('the restricted check reports each violation of a bad pod', () => {
    const bad: IPodSpec = {
      hostNetwork: true,
      securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000 },
      volumes: [{ name: 'host', hostPath: { path: '/var/run' } }],
      containers: [{
        name: 'app',
        image: 'example',
        securityContext: {
          allowPrivilegeEscalation: false,
          capabilities: { drop: ['NET_RAW'], add: ['SYS_ADMIN'] },
          readOnlyRootFilesystem: false,
          runAsUser: 0,
          seccompProfile: { type: 'Unconfined' },
        },
        volumeMounts: [{ name: 'host', mountPath: '/tmp' }],
      }],
    };
    expect(restrictedViolations('bad', bad)).toEqual([
      'bad: pod seccompProfile is not RuntimeDefault',
      'bad: pod shares a host namespace',
      'bad: volume host is of a type not allowed (hostPath)',
      'bad container app: capabilities do not drop ALL',
      'bad container app: adds capabilities SYS_ADMIN',
      'bad container app: readOnlyRootFilesystem is not true',
      'bad container app: runAsNonRoot is not true',
      'bad container app: runAsUser is 0',
      'bad container app: seccompProfile is not RuntimeDefault',
      'bad container app: no emptyDir at /tmp',
    ]);
  });

  it('has a migrate Job that runs `reconciler migrate`, bounded and cleaned up', () => {
    const [job, ...others] = all<IJob>('Job');
    expect(others).toEqual([]);
    const spec = job!.spec!;
    const [container] = spec.template.spec!.containers;
    // No `command`: the image's entrypoint (tini) runs `reconciler migrate`, found on PATH.
    expect([...(container!.command ?? []), ...(container!.args ?? [])]).toEqual(['reconciler', 'migrate']);
    expect(spec.backoffLimit).toBeTypeOf('number');
    expect(spec.ttlSecondsAfterFinished).toBeTypeOf('number');
    expect(['Never', 'OnFailure']).toContain(spec.template.spec!.restartPolicy);
    expect(container!.resources?.requests?.memory).toBeDefined();
    expect(container!.resources?.limits?.memory).toBeDefined();
  });

  it('has a Deployment with a startup probe on /healthz, probes, spread and a grace period', () => {
    const [deployment] = all<IDeployment>('Deployment');
    const pod = deployment!.spec!.template.spec!;
    const [container] = pod.containers;
    expect(envValue(container!.env, 'STARTUP_TIMEOUT'), 'STARTUP_TIMEOUT is set explicitly').toBeDefined();
    // /healthz answers once the job files are imported; /readyz would restart pods over a broken job file.
    const probe = container!.startupProbe;
    expect(probe?.httpGet?.path).toBe('/healthz');
    expect((probe!.failureThreshold ?? 3) * (probe!.periodSeconds ?? 10)).toBeGreaterThanOrEqual(60);
    expect(container!.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(container!.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(container!.resources?.requests).toBeDefined();
    expect(container!.resources?.limits).toBeDefined();
    expect(envValue(container!.env, 'JOBS_DIR')).toBe('/app/jobs');
    const shutdown = parseDuration(envValue(container!.env, 'SHUTDOWN_TIMEOUT') ?? '25s');
    expect((pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(shutdown);

    const labels = deployment!.spec!.template.metadata?.labels ?? {};
    const spread = pod.topologySpreadConstraints ?? [];
    expect(spread.map((c) => c.topologyKey).sort()).toEqual(['kubernetes.io/hostname', 'topology.kubernetes.io/zone']);
    for (const c of spread) expect(labels).toMatchObject(c.labelSelector?.matchLabels ?? { selects: 'nothing' });
  });

  it("has a PodDisruptionBudget that selects the Deployment's pods", () => {
    const [deployment] = all<IDeployment>('Deployment');
    const labels = deployment!.spec!.template.metadata?.labels ?? {};
    const budgets = all<IPodDisruptionBudget>('PodDisruptionBudget').filter((pdb) => {
      const selector = pdb.spec?.selector;
      const match = selector?.matchLabels ?? {};
      return Object.keys(match).length > 0 && !selector?.matchExpressions && Object.entries(match).every(([k, v]) => labels[k] === v);
    });
    expect(budgets).toHaveLength(1);
    expect(budgets[0]!.spec!.minAvailable ?? budgets[0]!.spec!.maxUnavailable).toBeDefined();
  });

  it('has one Secret holding DATABASE_URL only, which every pod reads', () => {
    const secrets = all<ISecret>('Secret');
    expect(secrets).toHaveLength(1);
    expect(Object.keys({ ...secrets[0]!.data, ...secrets[0]!.stringData })).toEqual(['DATABASE_URL']);
    expect(text).not.toMatch(/PAYMENT_/);
    const pods = [...all<IJob>('Job'), ...all<IDeployment>('Deployment')].map((w) => w.spec!.template.spec!);
    for (const c of pods.flatMap((pod) => pod.containers)) {
      expect(c.envFrom?.map((source) => source.secretRef?.name)).toContain(secrets[0]!.metadata?.name);
    }
  });
});
