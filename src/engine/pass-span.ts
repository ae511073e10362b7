/**
 * A pass's span: the root of its trace while tracing is on (docs/operations.md, "Traces").
 */
import type { Partition, Reconciler } from '../reconciler.js';
import { engineTracer, settleSpan } from '../tracing/index.js';
import type { PassAttempt, RunRequest } from './engine.js';

/**
 * A pass (or the attempt at one) as the root span of its own trace while tracing is on: its lease,
 * scan pages, items and records are its children; it ends with the pass's status and counts, or
 * why it did not run (another replica holds the lease, the tick was served).
 */
export function tracedPass(reconciler: Reconciler, request: RunRequest, partition: Partition, run: () => Promise<PassAttempt>): Promise<PassAttempt> {
  const tracer = engineTracer();
  if (!tracer) return run();
  const span = tracer.pass(`pass ${reconciler.name}`, {
    'reconciler.name': reconciler.name,
    'reconciler.partition': reconciler.partitions > 1 ? partition.index : undefined,
    'reconciler.trigger': request.trigger,
    'reconciler.dry_run': request.dryRun === true,
    'reconciler.only_key': request.onlyKey,
  });
  return settleSpan(span, tracer.within(span, run), (attempt) => {
    if (!attempt.ran) {
      span.set({ 'reconciler.pass.ran': false, 'reconciler.pass.not_run_reason': attempt.reason });
      return;
    }
    const { result } = attempt;
    const counts: Record<string, number> = {};
    for (const [name, value] of Object.entries(result.counts)) counts[`reconciler.pass.${name}`] = value;
    span.set({ 'reconciler.pass.ran': true, 'reconciler.pass.id': result.runId ?? undefined, 'reconciler.pass.status': result.status, 'reconciler.pass.complete': result.complete, ...counts });
    if (result.status === 'error') span.fail(new Error(result.error ?? 'the pass broke off'), 'pass_error');
  });
}
