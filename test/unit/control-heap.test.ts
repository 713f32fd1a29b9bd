/**
 * The control worker's heap (control/worker/spawn.ts controlThread): a thread
 * made by it holds what a first PUT of 10 000 services promotes (~40 MB of
 * small objects, all kept) without a single full mark-compact, because its
 * first old-generation limit is CONTROL_INITIAL_OLD_GENERATION_MB; and its
 * young generation is the one spawn.ts states. Counted by the thread itself
 * (perf_hooks 'gc' entries of the major kind), not timed.
 */
import t from 'tap';
import { controlThread, CONTROL_INITIAL_OLD_GENERATION_MB, CONTROL_YOUNG_GENERATION_MB } from '../../control/worker/spawn.ts';

// kept objects like a rule set's: a service object with strings and small arrays, ~40 MB in all
const body = `
import { parentPort } from 'node:worker_threads';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
let major = 0, minor = 0;
const obs = new PerformanceObserver((l) => { for (const e of l.getEntries()) e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR ? major++ : minor++; });
obs.observe({ entryTypes: ['gc'] });
const kept = [];
for (let i = 0; i < 80000; i++) kept.push({ namespace: 'ns-' + (i % 100), name: 'svc-' + i, ports: [{ name: 'p', port: i & 0xffff, targetPort: 8080 }], endpoints: [{ address: '10.64.' + (i >> 8 & 255) + '.' + (i & 255) }, { address: '10.65.0.' + (i & 255) }] });
const used = getHeapSpaceStatistics().find((s) => s.space_name === 'old_space').space_used_size;
const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
setTimeout(() => { obs.disconnect(); parentPort.postMessage({ major, minor, used, young, kept: kept.length }); }, 50);
`;

t.test(`a thread with the control worker's heap keeps ~40 MB without a full collection (first old-generation limit ${CONTROL_INITIAL_OLD_GENERATION_MB} MB)`, async (t) => {
  const w = controlThread(new URL(`data:text/javascript,${encodeURIComponent(body)}`), null);
  const r = await new Promise<{ major: number; minor: number; used: number; young: number; kept: number }>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  t.equal(r.kept, 80000);
  t.ok(r.used > 30 * 2 ** 20, `the old generation holds what was kept (${(r.used / 2 ** 20).toFixed(1)} MB)`);
  t.ok(r.minor > 0, `young collections promoted it (${r.minor})`);
  t.equal(r.major, 0, 'no full mark-compact before the old generation reaches its first limit');
  t.ok(r.young <= (CONTROL_YOUNG_GENERATION_MB * 2 ** 20 * 2) / 3 + 2 ** 20, `the young generation stays within its limit (${(r.young / 2 ** 20).toFixed(0)} MB of new space)`);
});
