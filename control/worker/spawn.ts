/**
 * Start the control worker (control-worker.ts) from the packet thread and
 * answer its requests there (PacketHost).
 */
import { Worker } from 'node:worker_threads';
import { EventEmitter, once } from 'node:events';
import type { Dataplane } from '../dataplane.ts';
import type { Tables } from '../../dataplane/tables.ts';
import { PacketHost } from './host.ts';
import type { InstallInfo } from './host.ts';
import type { ControlWorkerData } from './control-worker.ts';

export interface WorkerEvent {
  ev: string;
  [k: string]: unknown;
}

/**
 * The control worker's young generation: 96 MB (semi-spaces of 32 MB, V8's
 * default is 16). A PUT parses, validates and models every service, and
 * nearly all of it survives to the swap; with small semi-spaces the
 * scavenger copies it again and again. Measured on 10 000 services
 * (bench/sync.ts's method, this 2-core Intel machine): in force 98-99 ms with
 * the default, 73-74 ms with semi-spaces of 32 MB. bench:sync runs with
 * --max-semi-space-size=32 for the same reason.
 */
export const CONTROL_YOUNG_GENERATION_MB = 96;

export class ControlWorker extends EventEmitter {
  readonly worker: Worker;
  readonly host: PacketHost;
  private exited = false;

  constructor(dp: Dataplane, data: ControlWorkerData) {
    super();
    // compiled (dist/, this file is .js): the worker's compiled module itself; from the sources: boot.mjs registers tsx first
    const entry = import.meta.url.endsWith('.js') ? './control-worker.js' : './boot.mjs';
    this.worker = new Worker(new URL(entry, import.meta.url), { workerData: data, resourceLimits: { maxYoungGenerationSizeMb: CONTROL_YOUNG_GENERATION_MB } });
    this.host = new PacketHost(dp, this.worker);
    this.host.onInstalled = (t: Tables, info: InstallInfo) => this.emit('installed', t, info);
    this.worker.on('message', (m: WorkerEvent) => {
      if (this.host.handle(m)) return;
      if (typeof m?.ev === 'string') this.emit(m.ev, m);
    });
    this.on('log', (m: WorkerEvent) => process.stderr.write(`tunproxy: ${String(m.msg)}\n`));
    this.worker.on('error', (e) => this.emit('worker-error', e));
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.emit('exit', code);
    });
  }

  post(m: { ctl: string }): void {
    if (!this.exited) this.worker.postMessage(m);
  }

  /** The next event of one of these kinds (rejects when the worker dies first). */
  async next(...kinds: string[]): Promise<WorkerEvent> {
    const ac = new AbortController();
    try {
      return await Promise.race([
        ...kinds.map((k) => once(this, k, { signal: ac.signal }).then(([m]) => m as WorkerEvent)),
        once(this, 'worker-error', { signal: ac.signal }).then(([e]) => Promise.reject(e as Error)),
        once(this, 'exit', { signal: ac.signal }).then(([code]) => Promise.reject(new Error(`the control worker exited (code ${code})`))),
      ]);
    } finally {
      ac.abort();
    }
  }

  /** Resolves once tables of this generation (or newer) are in force on the packet thread. */
  async inForce(dp: Dataplane, generation: number): Promise<void> {
    while ((dp.tables?.generation ?? 0) < generation) await once(this, 'installed');
  }

  async stop(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    this.post({ ctl: 'stop' });
    const timer = new Promise((r) => setTimeout(r, timeoutMs).unref());
    await Promise.race([this.next('stopped').catch(() => {}), timer]);
    await this.worker.terminate();
  }
}
