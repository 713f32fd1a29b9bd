/**
 * Typed arrays on shared memory, for the tables the control worker makes and
 * the packet thread reads (control/compile.ts, dataplane/tables-wire.ts).
 */

/** An Int32Array of n on a SharedArrayBuffer (zeroed). */
export function sharedInt32(n: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(Math.max(n, 2) * 4), 0, n);
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
  const a = new C(new SharedArrayBuffer(Math.max(n + (n >> 2), 8) * C.BYTES_PER_ELEMENT), 0, n);
  a.set((used === from.length ? from : from.subarray(0, used)) as never);
  return a;
}
