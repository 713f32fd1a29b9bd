/**
 * What `tunproxy run` can do to keep the packet thread from waiting on the
 * machine: a higher CPU priority for that one thread (--packet-priority), a
 * CPU of its own (--packet-cpu), short naps at SCHED_FIFO (--packet-nap,
 * dataplane/cpu-share.ts), a longer TUN queue (--txqueuelen), and one
 * collection of its heap before the packets move (collectBeforeStart).
 *
 * Measured with bench:reliability's baseline (no event, the stream alone at
 * 10 000 pkt/s) on a 2-core machine shared with other work (load 5–8): with
 * no priority the receiver's gaps were 15–95 ms, and they were the packet
 * thread waiting for a CPU (the sender had paused < 2 ms; the datagrams had
 * waited in the TUN as long as the gap); with SCHED_FIFO they fell to
 * ~1.5 ms, except one of 8–22 ms about 8 s after the start: V8's memory
 * reducer, which compacts the packet thread's heap (~22 MB of code and
 * modules) once its allocation rate falls. That one is off only with node's
 * `--no-memory-reducer` on the command line (V8 reads it when the heap is
 * made; v8.setFlagsFromString at run time was measured to change nothing):
 * README "Packets that never wait".
 */
import { spawnSync } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { promises as fsp, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, getPriority, setPriority } from 'node:os';

export type PacketPriority = { kind: 'none' } | { kind: 'nice'; value: number } | { kind: 'fifo'; value: number };

/** `none`, `nice:N` (-20..19) or `fifo:N` (1..99); a clear error naming --packet-priority otherwise. */
export function parsePacketPriority(s: string): PacketPriority {
  if (s === 'none') return { kind: 'none' };
  const m = /^(nice|fifo):(-?\d+)$/.exec(s);
  if (m !== null) {
    const v = Number(m[2]);
    if (m[1] === 'nice' && v >= -20 && v <= 19) return { kind: 'nice', value: v };
    if (m[1] === 'fifo' && v >= 1 && v <= 99) return { kind: 'fifo', value: v };
  }
  throw new Error(`--packet-priority: ${JSON.stringify(s)} is not none, nice:N (N from -20 to 19) or fifo:N (N from 1 to 99)`);
}

/**
 * Raise the calling thread (the packet thread: its Linux thread id is the
 * process id) and only it. Called once every other thread exists (the control
 * worker, V8's helper threads, libuv's thread pool, started here first), so
 * none inherits the priority. Returns what was done, for the log; throws with
 * the reason when the system refuses (not root / no CAP_SYS_NICE).
 */
export async function raisePacketThread(p: PacketPriority): Promise<string> {
  if (p.kind === 'none') return 'the packet thread at the default priority';
  // libuv starts all its pool threads at the first request: start them now, before the raise
  await fsp.stat('/');
  const tid = process.pid;
  if (p.kind === 'nice') {
    const before = getPriority(tid);
    try {
      setPriority(tid, p.value);
    } catch (e) {
      throw new Error(`--packet-priority nice:${p.value}: ${(e as Error).message}`);
    }
    return `the packet thread at nice ${p.value} (was ${before}); the other threads unchanged`;
  }
  const r = spawnSync('chrt', ['-f', '-p', String(p.value), String(tid)], { encoding: 'utf8' });
  if (r.error) throw new Error(`--packet-priority fifo:${p.value}: cannot run chrt (util-linux): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`--packet-priority fifo:${p.value}: chrt refused: ${r.stderr.trim()}`);
  return `the packet thread at SCHED_FIFO ${p.value} (like the kernel's own packet processing, it runs before every ordinary task); the other threads unchanged`;
}

/**
 * The TUN device's queue length (packets the kernel holds for tunproxy to read;
 * Linux's default for a TUN is 500). While the packet thread is held up, packets
 * routed to the device wait there; once it is full they are dropped. At 200 000
 * packets/s the default 500 is 2.5 ms; 10 000 is 50 ms. 0 keeps the device's.
 * Returns the length before and after, or throws naming --txqueuelen.
 */
export function setTxQueueLen(dev: string, n: number): { before: number; after: number } {
  const path = `/sys/class/net/${dev}/tx_queue_len`;
  let before: number;
  try {
    before = Number(readFileSync(path, 'utf8').trim());
    if (n > 0 && n !== before) writeFileSync(path, `${n}\n`);
  } catch (e) {
    throw new Error(`--txqueuelen ${n}: cannot set the queue of ${dev} (${path}): ${(e as Error).message}`);
  }
  return { before, after: n > 0 ? n : before };
}

/**
 * What `tunproxy run` and `tunproxy tun-holder` do with the TUN they opened:
 * a device this process created is made persistent (it stays, with its
 * addresses and routes, when the process stops; `who` names the process in
 * the log), and its queue is set to `txqueuelen` packets (0: kept). A queue
 * that cannot be set closes the device and throws.
 */
export function prepareDevice(
  tun: { readonly name: string; persist(on: boolean): void; close(): void },
  o: { created: boolean; txqueuelen: number; who: string; log: (msg: string) => void },
): void {
  if (o.created) {
    try {
      tun.persist(true);
      o.log(`created ${tun.name} persistent: it stays when ${o.who} stops (ip link delete ${tun.name} removes it)`);
    } catch (e) {
      o.log(`created ${tun.name}, but cannot make it persistent (${(e as Error).message}): it goes when ${o.who} stops`);
    }
  }
  if (o.txqueuelen > 0) {
    try {
      const q = setTxQueueLen(tun.name, o.txqueuelen);
      o.log(`${tun.name} queue: ${q.after} packets${q.before !== q.after ? ` (was ${q.before})` : ''}`);
    } catch (e) {
      tun.close();
      throw e;
    }
  }
}

/** --txqueuelen: an integer 0..1 000 000 (0: keep the device's). */
export function parseTxQueueLen(s: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isInteger(n) || n > 1_000_000) throw new Error(`--txqueuelen: ${JSON.stringify(s)} must be a number of packets 0..1000000 (0: keep the device's)`);
  return n;
}

/** --packet-cpu: -1 (not given) or a CPU number this machine has; a clear error otherwise. */
export function parsePacketCpu(s: string | undefined, cpus = availableParallelism()): number {
  if (s === undefined || s === 'none') return -1;
  const n = Number(s);
  if (!/^\d+$/.test(s) || n >= cpus) throw new Error(`--packet-cpu: ${JSON.stringify(s)} must be a CPU number 0..${cpus - 1} (or none)`);
  if (cpus < 2) throw new Error('--packet-cpu: this machine has one CPU; there is no other one for the control worker');
  return n;
}

/**
 * The packet thread on CPU `cpu` and every other thread of the process (the
 * control worker, V8's helpers, libuv's pool) on every other CPU
 * (sched_setaffinity, through taskset). Measured (perf, sched_switch of the
 * packet thread during 1 000 swaps on a loaded 2-core machine): with the
 * packet thread at SCHED_FIFO, the control worker's postMessage wakes it while
 * still holding the port's lock (node's MessagePortData::AddToIncomingQueue
 * signals under its mutex); on the same CPU the packet thread preempts the
 * worker at once and then blocks on that lock until the worker, an ordinary
 * task, runs again: 931 waits, up to 13.6 ms each. On different CPUs the
 * worker lets go of the lock within microseconds. The other threads are
 * ordinary tasks too: on the packet thread's CPU they would only wait for it,
 * and, starved, make the kernel take the CPU from it (cpu-share.ts).
 */
export function pinPacketThread(cpu: number, cpus = availableParallelism()): string {
  const others = [...Array(cpus).keys()].filter((c) => c !== cpu).join(',');
  const set = (args: string[], what: string) => {
    const r = spawnSync('taskset', args, { encoding: 'utf8' });
    if (r.error) throw new Error(`--packet-cpu ${cpu}: cannot run taskset (util-linux): ${r.error.message}`);
    if (r.status !== 0) throw new Error(`--packet-cpu ${cpu}: taskset refused for ${what}: ${r.stderr.trim()}`);
  };
  // every thread first (-a), then the packet thread (its Linux thread id is the process id) back alone
  set(['-a', '-p', '-c', others, String(process.pid)], 'the threads of this process');
  set(['-p', '-c', String(cpu), String(process.pid)], 'the packet thread');
  return `the packet thread on CPU ${cpu}, the control worker on CPU ${others} with every other thread of this process (V8's, libuv's)`;
}

/**
 * A full garbage collection of the calling thread's heap, now: `tunproxy run`
 * calls it once, before the packets move, after the start-up made what stays
 * (the rule set's views, the recovered connections). V8 moves an object out
 * of the young generation at the second scavenge it survives; left alone,
 * what the start made stays there, and the first scavenges under traffic copy
 * it (measured in bench:reliability's import-100k with --trace-gc-nvp: 1.9 MB
 * of the start promoted by a scavenge 14 s later, a 3.7-10 ms pause of the
 * packet thread). Collected here, they pause nothing that moves.
 * `gc` is not a global without node's --expose-gc: the flag is set for a new
 * context, whose gc collects this thread's heap. Returns the time it took
 * (ms), or null when it could not be done (then nothing happened).
 */
export function collectBeforeStart(): number | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    if (typeof gc !== 'function') return null;
    const t0 = performance.now();
    (gc as () => void)();
    return performance.now() - t0;
  } catch {
    return null;
  }
}
