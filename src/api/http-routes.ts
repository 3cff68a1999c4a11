import type { FastifyInstance } from 'fastify';
import type { Faults } from '../faults/faults.js';
import type { Metrics } from '../metrics/metrics.js';
import { errorHeaders, sendError } from '../insert/server.js';
import { ChorusError } from '../core/errors.js';

export interface Readiness {
  ready: boolean;
  reasons: string[];
  /** What refuses inserts now (backpressure); the replica stays ready for the rest. */
  backpressure?: string[];
}

/** /metrics, /healthz, /readyz and (tests only) /_chorus/faults on the HTTP port. */
export function registerOperationalRoutes(
  app: FastifyInstance,
  deps: { metrics: Metrics; readiness: () => Promise<Readiness>; faults: Faults; status: () => unknown; beforeScrape?: () => void },
): void {
  app.get('/metrics', async (_req, reply) => {
    deps.beforeScrape?.();
    return reply.header('Content-Type', deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });
  app.get('/healthz', async () => ({ ok: true }));
  app.get('/readyz', async (_req, reply) => {
    const r = await deps.readiness();
    if (!r.ready) reply.headers(errorHeaders(new ChorusError('NOT_READY', r.reasons.join('; '))));
    return reply.code(r.ready ? 200 : 503).send(r);
  });
  app.get('/_chorus/status', async () => deps.status());
  app.post('/_chorus/faults', async (req, reply) => {
    if (!deps.faults.enabled) return sendError(reply, new ChorusError('BAD_QUERY', 'fault hooks are disabled (testFaults: false)'));
    const body = await readJson(req.raw);
    return deps.faults.arm(body as Record<string, number>);
  });
}

async function readJson(stream: NodeJS.ReadableStream): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return text ? JSON.parse(text) : {};
  } catch {
    throw new ChorusError('BAD_QUERY', 'expected a JSON body');
  }
}
