/**
 * Typed arrays on shared memory, for the tables the control worker makes and
 * the packet thread reads (control/compile.ts, dataplane/tables-wire.ts).
 */

/**
 * Shared buffers the packet thread has let go of, for the control worker's
 * next copies. A one-service change in `tunproxy run` copies the tables'
 * arrays it writes (the packet thread may be reading the ones in force): at
 * 100 000 services the service rows (3.2 MB) for a replacement, the VIP
 * indexes (4 MB each) and the NodePort array for an addition. On a new
 * buffer that is memory touched for the first time on every change, which
 * on a VM costs the kernel a fault and a zeroed page per 4 KiB (~3 ms per MB
 * on the AMD machine: most of such a change's time). Once the packet thread
 * has swapped in a newer snapshot, the buffers only older snapshots used are
 * read by nobody (control/worker/remote.ts gives them back here), and the
 * next copy of the same size takes one: its pages are already there.
 *
 * Taking is always safe (a buffer is given back only when nothing reads
 * it); `give` is the caller's promise. Buffers are matched by exact size
 * (the copies of one array have the same size from one change to the next:
 * roomyBytes), and at most MAX_BYTES are kept: past it the buffers held
 * longest are left to the collector (sizes no longer asked for go first).
 */
export class SharedBufferPool {
  static readonly MAX_BYTES = 64 << 20;
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  /** the buffers held, oldest first */
  private order: SharedArrayBuffer[] = [];
  private heldBytes = 0;
  /** buffers taken again, given back, and made ahead (ensure) since the start (for tests and logs) */
  reused = 0;
  given = 0;
  made = 0;

  /** How many bytes the pool holds. */
  get bytes(): number {
    return this.heldBytes;
  }

  /** How many buffers of `byteLength` bytes the pool holds. */
  count(byteLength: number): number {
    return this.free.get(byteLength)?.length ?? 0;
  }

  /**
   * A buffer of `byteLength` bytes whose bytes from `keepFrom` on are zero
   * (those before it are for the caller to write: a copy's first part): a
   * held one of that size when there is one, else a new one.
   */
  take(byteLength: number, keepFrom = 0): SharedArrayBuffer {
    const list = this.free.get(byteLength);
    const b = list?.pop();
    if (b === undefined) return new SharedArrayBuffer(byteLength);
    if (list!.length === 0) this.free.delete(byteLength);
    this.order.splice(this.order.indexOf(b), 1);
    this.heldBytes -= byteLength;
    this.reused++;
    if (keepFrom < byteLength) new Uint8Array(b, keepFrom).fill(0);
    return b;
  }

  /** Keep `b` for a later take: nothing reads or writes it any more. */
  give(b: SharedArrayBuffer): void {
    if (b.byteLength === 0 || b.byteLength > SharedBufferPool.MAX_BYTES || this.order.includes(b)) return;
    while (this.heldBytes + b.byteLength > SharedBufferPool.MAX_BYTES) this.evictOldest();
    this.order.push(b);
    this.heldBytes += b.byteLength;
    this.given++;
    let list = this.free.get(b.byteLength);
    if (list === undefined) this.free.set(b.byteLength, (list = []));
    list.push(b);
  }

  /**
   * Hold at least `count` buffers of `byteLength` bytes, making the missing
   * ones now with every page touched (the control worker, when idle: the
   * next change then touches no memory for its copies).
   */
  ensure(byteLength: number, count = 1): void {
    for (let k = this.count(byteLength); k < count; k++) {
      const b = new SharedArrayBuffer(byteLength);
      new Uint8Array(b).fill(0);
      this.made++;
      this.give(b);
    }
  }

  private evictOldest(): void {
    const b = this.order.shift()!;
    const list = this.free.get(b.byteLength)!;
    list.splice(list.indexOf(b), 1);
    if (list.length === 0) this.free.delete(b.byteLength);
    this.heldBytes -= b.byteLength;
  }

  /** Forget every held buffer. */
  clear(): void {
    this.free.clear();
    this.order = [];
    this.heldBytes = 0;
  }
}

/** This thread's pool (the control worker's, in `tunproxy run`: the only thread that gives buffers back). */
export const sharedBuffers = new SharedBufferPool();

/**
 * The size of a buffer for an array that may grow (its room past the array
 * is for extendShared): `bytes` rounded up to an eighth of its power of two
 * (at most an eighth more) when it is past 64 KiB. Copies of one array whose
 * length moved a little (a service added) then have the same size, and the
 * pool's exact match finds the buffer an older snapshot let go of.
 */
export function roomyBytes(bytes: number): number {
  if (bytes <= 65536) return bytes;
  const step = 2 ** (Math.floor(Math.log2(bytes)) - 3);
  return Math.ceil(bytes / step) * step;
}

/** An Int32Array of n on a SharedArrayBuffer (zeroed; the buffer may be larger: roomyBytes). */
export function sharedInt32(n: number): Int32Array {
  return new Int32Array(sharedBuffers.take(roomyBytes(Math.max(n, 2) * 4)), 0, n);
}

export type Appendable = Int32Array | Uint16Array | Float64Array;
type SharedCtor<T extends Appendable> = { new (b: SharedArrayBuffer, o: number, n: number): T; readonly BYTES_PER_ELEMENT: number };

/**
 * `prev`'s first `used` elements and room for `n` in all: a longer view of
 * `prev`'s own shared memory when it has the room (nothing copied), else a
 * new buffer with a quarter more room than asked, the first `used` copied.
 *
 * Only for arrays that only grow: the caller writes past `used` and nowhere
 * else, and no array handed out before reaches past `used`. Every snapshot
 * made before then reads only its own length, which is never written again,
 * so the next snapshot can share the buffer: the packet thread may still be
 * reading the older one. A new buffer on every change instead meant memory
 * touched for the first time on every change, ~16 MB for one service added
 * to 100 000 (~45 ms at the AMD machine's 2.8 ms per MB).
 */
export function extendShared<T extends Appendable>(C: SharedCtor<T>, prev: T, used: number, n: number): T {
  const buf = prev.buffer;
  if (buf instanceof SharedArrayBuffer && prev.byteOffset === 0 && buf.byteLength >= n * C.BYTES_PER_ELEMENT) return new C(buf, 0, n);
  return copyShared(C, prev, used, n);
}

/**
 * A new array of `n` beginning with `from`'s first `used`, on a new shared
 * buffer with a quarter more room, for `extendShared` to append into later
 * (room never written costs no memory: the kernel gives pages when touched).
 */
export function copyShared<T extends Appendable>(C: SharedCtor<T>, from: T, used: number, n: number): T {
  const a = new C(sharedBuffers.take(roomyBytes(Math.max(n + (n >> 2), 8) * C.BYTES_PER_ELEMENT), used * C.BYTES_PER_ELEMENT), 0, n);
  a.set((used === from.length ? from : from.subarray(0, used)) as never);
  return a;
}
