/**
 * The C heap's free pages given back (control/malloc-trim.ts, pin.node's
 * mallocInfo/mallocTrim): holes made in this thread's arena by freeing every
 * other buffer are resident until a trim, and a trim gives them back.
 */
import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MallocTrimmer } from '../../control/malloc-trim.ts';
import { mallocInfo } from '../../dataplane/pin/index.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const MiB = 1024 * 1024;

t.test('the C heap as glibc counts it', async (t) => {
  // pin.node is built by setup (npx node-gyp rebuild), and Debian's C library is glibc
  const m = mallocInfo();
  t.ok(m !== null, 'read through pin.node');
  t.ok(m!.inUseBytes > 0 && m!.freeBytes >= 0 && m!.mmapBytes >= 0, JSON.stringify(m));
});

t.test('below the floor nothing is trimmed', async (t) => {
  const calls: string[] = [];
  const tr = new MallocTrimmer(4 * MiB, () => ({ inUseBytes: 10 * MiB, freeBytes: 4 * MiB - 1, mmapBytes: 0 }), () => (calls.push('trim'), true));
  t.equal(tr.tick(), false);
  t.same(calls, [], 'malloc_trim not called');
  t.same(tr.stats, { trims: 0, releasedBytes: 0, maxMs: 0 });
  const none = new MallocTrimmer(0, () => null, () => (calls.push('trim'), true));
  t.equal(none.tick(), false, 'nothing to read (no glibc): no trim');
});

t.test('holes left in an arena: resident until the trim gives them back', async (t) => {
  // 64 KiB buffers come from the arena (below glibc's mmap threshold); every other one is freed, so the
  // free memory is between buffers still in use: no arena top to shrink, the pages stay resident
  const keep: Buffer[] = [];
  let drop: Buffer[] = [];
  for (let i = 0; i < 640; i++) (i % 2 === 0 ? keep : drop).push(Buffer.allocUnsafeSlow(64 * 1024).fill(i & 255));
  const before = mallocInfo()!;
  drop = [];
  // the buffers' memory is freed when V8 sweeps their ArrayBuffers (on a background thread after the collection)
  let m = mallocInfo()!;
  for (let i = 0; i < 100 && m.freeBytes < before.freeBytes + 16 * MiB; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
    m = mallocInfo()!;
  }
  t.ok(m.freeBytes >= before.freeBytes + 16 * MiB, `freed 20 MiB: the arenas hold ${(m.freeBytes / MiB).toFixed(1)} MiB free (before: ${(before.freeBytes / MiB).toFixed(1)})`);
  const tr = new MallocTrimmer(16 * MiB);
  const rss0 = process.memoryUsage.rss();
  t.equal(tr.tick(), true, 'past the floor: trimmed');
  const rss1 = process.memoryUsage.rss();
  t.ok(rss0 - rss1 >= 16 * MiB, `the resident set fell by ${((rss0 - rss1) / MiB).toFixed(1)} MiB`);
  t.equal(tr.stats.trims, 1);
  t.ok(tr.stats.releasedBytes >= 16 * MiB && tr.stats.maxMs > 0, JSON.stringify(tr.stats));
  t.equal(keep.every((b, i) => b[0] === ((2 * i) & 255) && b[65535] === ((2 * i) & 255)), true, 'the buffers in use are untouched');
});
