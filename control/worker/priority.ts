/**
 * What `tunproxy run` can do to keep the packet thread from waiting on the
 * machine: a higher CPU priority for that one thread (--packet-priority) and
 * a longer TUN queue (--txqueuelen).
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
import { promises as fsp, readFileSync, writeFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

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

/** --txqueuelen: an integer 0..1 000 000 (0: keep the device's). */
export function parseTxQueueLen(s: string): number {
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isInteger(n) || n > 1_000_000) throw new Error(`--txqueuelen: ${JSON.stringify(s)} must be a number of packets 0..1000000 (0: keep the device's)`);
  return n;
}
