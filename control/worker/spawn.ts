/**
 * Start the control worker (control-worker.ts) from the packet thread and
 * answer its requests there (PacketHost).
 */
import { Worker } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
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

/**
 * The control worker's first old-generation limit: 128 MB. V8 starts a heap
 * with a small limit and runs a full mark-compact each time the old
 * generation outgrows it. A first PUT of 10 000 services promotes ~40 MB
 * (the body's objects and their model, all kept while in force), so a fresh
 * worker marked everything at least once before answering, and the first
 * PUT is what `bench:e2e` measures as the load. The limit only moves when
 * the first full collection comes: no memory is committed for it, and after
 * that collection V8 sizes the limit from what is live, as before. Measured
 * on this 2-core Intel machine: a fresh node (semi-spaces of 32 MB, as here)
 * parsing bench/e2e.ts's 10 000-service rule set, then validateRuleSet,
 * compile and TablesEncoder.encode once, medians of 9: 188 ms without, 172
 * with, of which garbage collection 46 ms and 37. The cost moves, in part:
 * the first full collection comes two or three such PUTs later.
 *
 * worker_threads' resourceLimits have no initial size, and V8 reads its
 * heap flags when an isolate is made: the flag is set on the process just
 * before the worker is made (the packet thread's heap, made at start, keeps
 * its own sizes). Only this worker is made afterwards.
 */
export const CONTROL_INITIAL_OLD_GENERATION_MB = 128;

/** A worker thread with the control worker's heap: its young generation and its first old-generation limit. */
export function controlThread(url: URL, workerData: unknown): Worker {
  setFlagsFromString(`--initial-old-space-size=${CONTROL_INITIAL_OLD_GENERATION_MB}`);
  return new Worker(url, { workerData, resourceLimits: { maxYoungGenerationSizeMb: CONTROL_YOUNG_GENERATION_MB } });
}

/**
 * The control worker's thread, started before the packet side is ready to
 * talk to it: its module loading and API set-up (~600 ms of a ~1.2 s start
 * on the AMD machine) run while the packet thread loads the dataplane, opens
 * the pinned tables and makes its Dataplane. What the thread sends meanwhile
 * is kept, in order, for the ControlWorker that takes it (nothing is lost to
 * an event with no listener). Until then it does not keep the process
 * alive (unref): a start that fails before ends the process as before.
 */
export class ControlThread {
  readonly worker: Worker;
  /** messages, errors and the exit, in order, until a ControlWorker takes the thread */
  held: Array<{ kind: 'message'; m: WorkerEvent } | { kind: 'error'; e: Error } | { kind: 'exit'; code: number }> | null = [];
  private readonly onMessage = (m: WorkerEvent) => this.held?.push({ kind: 'message', m });
  private readonly onError = (e: Error) => this.held?.push({ kind: 'error', e });
  private readonly onExit = (code: number) => this.held?.push({ kind: 'exit', code });

  constructor(data: ControlWorkerData) {
    // compiled (dist/, this file is .js): the worker's compiled module itself; from the sources: boot.mjs registers tsx first
    const entry = import.meta.url.endsWith('.js') ? './control-worker.js' : './boot.mjs';
    this.worker = controlThread(new URL(entry, import.meta.url), data);
    this.worker.unref();
    this.worker.on('message', this.onMessage);
    this.worker.on('error', this.onError);
    this.worker.on('exit', this.onExit);
  }

  /** What it held; from now on the caller's listeners get its events. */
  take(): NonNullable<ControlThread['held']> {
    const held = this.held ?? [];
    this.held = null;
    this.worker.ref();
    this.worker.off('message', this.onMessage);
    this.worker.off('error', this.onError);
    this.worker.off('exit', this.onExit);
    return held;
  }
}

export class ControlWorker extends EventEmitter {
  readonly worker: Worker;
  readonly host: PacketHost;
  private exited = false;

  /** `from`: a thread started before (ControlThread), its events so far delivered now; or the data to start one with here. */
  constructor(dp: Dataplane, from: ControlWorkerData | ControlThread) {
    super();
    const thread = from instanceof ControlThread ? from : new ControlThread(from);
    this.worker = thread.worker;
    this.host = new PacketHost(dp, this.worker);
    this.host.onInstalled = (t: Tables, info: InstallInfo) => this.emit('installed', t, info);
    const onMessage = (m: WorkerEvent) => {
      if (this.host.handle(m)) return;
      if (typeof m?.ev === 'string') this.emit(m.ev, m);
    };
    const onError = (e: Error) => this.emit('worker-error', e);
    const onExit = (code: number) => {
      this.exited = true;
      this.emit('exit', code);
    };
    this.on('log', (m: WorkerEvent) => process.stderr.write(`tunproxy: ${String(m.msg)}\n`));
    const held = thread.take();
    this.worker.on('message', onMessage);
    this.worker.on('error', onError);
    this.worker.on('exit', onExit);
    // what the thread sent before: after the caller has attached its own listeners (next() and on()
    // come after this constructor), in a microtask, in order
    if (held.length > 0) {
      queueMicrotask(() => {
        for (const h of held) {
          if (h.kind === 'message') onMessage(h.m);
          else if (h.kind === 'error') onError(h.e);
          else onExit(h.code);
        }
      });
    }
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
