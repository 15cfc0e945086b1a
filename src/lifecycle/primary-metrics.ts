import { Counter, Gauge, Registry } from 'prom-client';

/**
 * What the primary of several workers counts itself, beside the workers' metrics: reloads of the
 * host (once per reload, the workers' own counts are left out), worker restarts, workers ready.
 */
export class PrimaryMetrics {
  readonly registry = new Registry();
  readonly reloads: Counter<'result'>;
  readonly restarts: Counter;

  constructor(readyWorkers: () => number) {
    const r = this.registry;
    this.reloads = new Counter({
      name: 'sluice_config_reloads_total',
      help: 'Config reloads',
      labelNames: ['result'],
      registers: [r],
    });
    // Both results exist from the start, so that increase() sees the first failed reload.
    for (const result of ['success', 'failure']) this.reloads.inc({ result }, 0);
    this.restarts = new Counter({
      name: 'sluice_worker_restarts_total',
      help: 'Worker processes restarted after a crash',
      registers: [r],
    });
    new Gauge({
      name: 'sluice_workers_ready',
      help: 'Worker processes running and ready',
      registers: [r],
      collect() {
        this.set(readyWorkers());
      },
    });
  }
}
