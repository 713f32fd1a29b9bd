/**
 * The C heap's free pages given back, now and then. glibc keeps what a thread
 * frees in that thread's arena for its next malloc and returns only an
 * arena's top to the kernel; the holes stay resident. In a long run the
 * arenas of tunproxy's threads (node's buffers for the API's bodies and
 * answers, libuv, V8's own mallocs) hold more and more such free memory:
 * measured in bench:reliability's 10-minute soak (a rule-set swap a second,
 * new flows at 2 000/s) on the AMD machine, /proc/<pid>/smaps showed three
 * thread arenas (64 MiB-aligned anonymous mappings) growing by 5.0 MiB
 * resident between the end of the warm-up and the end, while every thread's
 * external memory (its live buffers) stayed flat. Not all of that is free
 * memory: in another such soak the C heap's memory in use (mallinfo2) grew
 * by 4.1 MiB too, which no trim gives back (where from is not found yet: it
 * is neither heap's objects nor their buffers).
 *
 * `tick` (a timer of the control worker, every TRIM_EVERY_MS) trims when the
 * arenas hold at least TRIM_MIN_FREE_BYTES free: malloc_trim(0) advises the
 * kernel away the whole free pages inside every arena. It runs on the control
 * worker; the packet thread waits only if it mallocs from an arena while that
 * arena is being trimmed (how long a trim takes is counted: `maxMs`). The
 * cost of a trim is paid later by whoever mallocs there again: those pages
 * come back zeroed, at first touch. Hence at most once per TRIM_EVERY_MS,
 * and only past a floor.
 * In that soak, trimming every 10 s gave back 47 MiB in 60 trims (0.8 MiB
 * each, faulted in again before the next one), and the stream had more gaps
 * over 5 ms (355 and 423 in two runs, against 228 and 322 in two runs
 * without trims; the machine's noise is of that size): once a minute, a
 * sixth as many trims.
 */
import { performance } from 'node:perf_hooks';
import { mallocInfo, mallocTrim } from '../dataplane/pin/index.ts';
import type { MallocInfo } from '../dataplane/pin/index.ts';

export const TRIM_EVERY_MS = 60_000;
export const TRIM_MIN_FREE_BYTES = 4 * 1024 * 1024;

export interface TrimStats {
  /** trims run (the free memory was past the floor) */
  trims: number;
  /** resident memory the trims gave back, in all (the process's RSS before minus after each) */
  releasedBytes: number;
  /** the longest trim */
  maxMs: number;
}

export class MallocTrimmer {
  readonly stats: TrimStats = { trims: 0, releasedBytes: 0, maxMs: 0 };
  constructor(
    private readonly minFreeBytes = TRIM_MIN_FREE_BYTES,
    private readonly info: () => MallocInfo | null = mallocInfo,
    private readonly trim: () => boolean = mallocTrim,
  ) {}

  /** Trim when the arenas hold at least the floor free; true when a trim ran. */
  tick(): boolean {
    const m = this.info();
    if (m === null || m.freeBytes < this.minFreeBytes) return false;
    const rss0 = process.memoryUsage.rss();
    const t0 = performance.now();
    this.trim();
    const ms = performance.now() - t0;
    this.stats.trims++;
    this.stats.releasedBytes += Math.max(0, rss0 - process.memoryUsage.rss());
    if (ms > this.stats.maxMs) this.stats.maxMs = ms;
    return true;
  }

  /** tick() every `everyMs` (an unref'd timer: it never keeps the process alive); returns the stop. */
  start(everyMs = TRIM_EVERY_MS): () => void {
    const t = setInterval(() => this.tick(), everyMs);
    t.unref();
    return () => clearInterval(t);
  }
}

/** The process's trimmer: `tunproxy run`'s control worker starts it; /v1/stats reports it. */
export const processTrimmer = new MallocTrimmer();
