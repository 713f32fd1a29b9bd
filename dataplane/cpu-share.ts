/**
 * The packet thread gives its CPU away a little at a time, so that the kernel
 * never takes it away for long (`tunproxy run --packet-priority fifo`).
 *
 * A SCHED_FIFO thread runs before every ordinary task on its CPU. When it
 * holds the CPU without a pause (a burst of traffic at its full rate, a large
 * snapshot built in slices between batches), the ordinary tasks queued on
 * that CPU starve, and the kernel then gives them their share in one piece:
 * its fair server (a deadline entity, Linux 6.12 and later; RT throttling
 * before it) runs them ahead of every real-time task for up to 50 ms of each
 * second. For the packet thread that is a stall of up to 50 ms, with the
 * packets waiting in the TUN or lost. Measured on this 2-core Intel VM
 * (Linux 6.18): a SCHED_FIFO loop holding CPU 1 beside one ordinary busy loop
 * lost the CPU 10 times in 10 s, 54 ms each; the same loop sleeping 0.1 ms
 * after every 1.9 ms never lost it for more than 0.24 ms. In bench:reliability
 * (`perf record -e sched:sched_switch`), the packet thread was switched out
 * for an ordinary task (a pod's server, woken on its CPU by the packets it
 * delivered) and the CPU then sat idle with the packet thread waiting: 24 ms.
 *
 * So the packet thread leaves the CPU itself, in its own control work: before
 * each slice of it (a snapshot built for a swap, the stale-flow sweep after
 * one, the expiry sweep, a listing's chunk, a deletion), when the thread has
 * gone `busyMs` without waiting at least `napMs` in its event loop (for
 * packets, a timer, anything), it sleeps the rest of `napMs`. Below its full
 * rate it waits for packets all the time and never naps; during control work
 * it keeps busyMs / (busyMs + napMs) of the CPU (2 ms and 0.2 ms: 91 %), and
 * the ordinary tasks on its CPU get the rest in slices of 0.2 ms, not 50 ms.
 *
 * Never between two batches of packets: napping there too was measured to
 * cost more than it saves once traffic alone fills the CPU. bench:reliability
 * put-100k (a full PUT of 100 000 services, the stream at 180 000 pkt/s, half
 * of bench:tun's rate), two runs each, interleaved: naps between batches as
 * well, 97 938 and 213 191 datagrams lost (the TUN's queue full, and the
 * pod's socket: its reader, woken on the packet thread's CPU, then ran there
 * only in the naps); without naps 0 and 39 261. A thread that traffic alone
 * keeps busy is left to the kernel.
 *
 * Off (`--packet-nap off`) where no ordinary task can run on the packet
 * thread's CPU (isolcpus, an exclusive cpuset), or without SCHED_FIFO (an
 * ordinary thread shares its CPU by itself).
 */
import { performance } from 'node:perf_hooks';

export interface CpuShareOptions {
  /** the longest the thread holds its CPU without waiting napMs (ms) */
  busyMs: number;
  /** what it waits at least every busyMs, sleeping for what its event loop did not wait (ms) */
  napMs: number;
  /** clock (ms); default performance.now */
  clock?: () => number;
  /** the time the thread's event loop has waited in all (ms); default node's event-loop idle time */
  idle?: () => number;
  /** sleep the calling thread (ms); default a futex wait (Atomics.wait), the thread off the CPU */
  sleep?: (ms: number) => void;
}

/** `--packet-nap`: BUSY/NAP in ms (BUSY 0.5..1000, NAP 0.01..BUSY) or off; a clear error naming the option otherwise. */
export function parsePacketNap(s: string): { busyMs: number; napMs: number } | null {
  if (s === 'off') return null;
  const m = /^(\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)$/.exec(s);
  if (m !== null) {
    const busyMs = Number(m[1]);
    const napMs = Number(m[2]);
    if (busyMs >= 0.5 && busyMs <= 1000 && napMs >= 0.01 && napMs <= busyMs) return { busyMs, napMs };
  }
  throw new Error(`--packet-nap: ${JSON.stringify(s)} is not off or BUSY/NAP in ms (BUSY from 0.5 to 1000, NAP from 0.01 to BUSY), e.g. 2/0.2`);
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
const futexSleep = (ms: number): void => {
  Atomics.wait(sleepCell, 0, 0, ms);
};
const loopIdle = (): number => performance.eventLoopUtilization().idle;

export class CpuShare {
  private busyMs = 0;
  private napMs = 0;
  private enabled = false;
  private readonly clock: () => number;
  private readonly idle: () => number;
  private readonly sleep: (ms: number) => void;
  /** where the current window began (clock) and the loop's idle time then */
  private windowAt = 0;
  private idleAt = 0;
  /** naps taken, and their time in all (ms) */
  naps = 0;
  napMsTotal = 0;

  constructor(o: Partial<CpuShareOptions> = {}) {
    this.clock = o.clock ?? (() => performance.now());
    this.idle = o.idle ?? loopIdle;
    this.sleep = o.sleep ?? futexSleep;
    if (o.busyMs !== undefined && o.napMs !== undefined) this.enable(o.busyMs, o.napMs);
  }

  get on(): boolean {
    return this.enabled;
  }

  enable(busyMs: number, napMs: number): void {
    this.busyMs = busyMs;
    this.napMs = napMs;
    this.enabled = true;
    this.windowAt = this.clock();
    this.idleAt = this.idle();
  }

  disable(): void {
    this.enabled = false;
  }

  /**
   * Called before each slice of the packet thread's control work: one clock read, and
   * once per busyMs the loop's idle time; a nap when the thread waited less
   * than napMs in the last busyMs. Returns the nap taken (ms), 0 for none.
   */
  check(): number {
    if (!this.enabled) return 0;
    const now = this.clock();
    if (now - this.windowAt < this.busyMs) return 0;
    const waited = this.idle() - this.idleAt;
    let nap = 0;
    if (waited < this.napMs) {
      nap = this.napMs - waited;
      this.sleep(nap);
      this.naps++;
      this.napMsTotal += nap;
    }
    this.windowAt = nap > 0 ? this.clock() : now;
    this.idleAt = this.idle();
    return nap;
  }
}

/** The packet thread's (each thread has its own module instance): off until `tunproxy run --packet-priority fifo` turns it on. */
export const packetCpuShare = new CpuShare();
