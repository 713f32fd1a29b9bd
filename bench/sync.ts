/**
 * npm run bench:sync [-- --services 1000,10000,100000 --reps 5 --nft-max 10000 --quick]
 *
 * --quick (a smoke run while working, not the figures of record): no
 * iptables-restore comparison (no namespace, no root needed) and no 1% PUTs;
 * only the full PUTs and the PATCHes, and nothing written to bench/results/.
 *
 * How long a new rule set takes to be in force, from the moment a client
 * sends `PUT /v1/ruleset` (the JSON already in hand) to the moment the
 * compiled tables are swapped in (the holder's swap listener: what the loop
 * takes at its next batch) — through the real API server on a Unix socket:
 * transfer, JSON parse, the validator (with the model), compile, swap.
 * Each PUT starts from a collected heap (gc(), then 200 ms for V8 to finish
 * sweeping). The npm script runs node with semi-spaces of 32 MB, the young
 * generation `tunproxy run` gives its control worker, where PUTs are served
 * (control/worker/spawn.ts CONTROL_YOUNG_GENERATION_MB). Beside it, single-service PATCHes (`PATCH /v1/services/{ns}/{name}`,
 * new endpoints) on the same rule set, 20 ms apart as an agent sends them
 * (no forced collection before each), and the time `iptables-restore`
 * (legacy; `iptables-nft-restore` too up to --nft-max services) takes to load
 * kube-proxy's rules for the same rule set (control/iptables/writer.ts) in a
 * network namespace made for it (tp-sync<pid>, deleted at the end). The ratio
 * is iptables-restore / PUT, in one run.
 *
 * bench/results/sync.json: [{"services", "applyMs", "patchMs", "iptablesRestoreMs"}] (medians); sync.md.
 * Bars (issue 11): 10 000 services in force <= 100 ms after the PUT and >= 20x
 * faster than iptables-restore; 100 000 services <= 1 s; a single-service PATCH
 * on 100 000 services in force <= 5 ms.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { syntheticRuleSet } from './gen.ts';
import { argList, argNum, fmt, gc, machine, median, writeResults } from './common.ts';
import { Dataplane } from '../control/dataplane.ts';
import { startApi } from '../control/server.ts';
import { ApiClient } from '../control/client.ts';
import { writeIptables } from '../control/iptables/writer.ts';
import type { RuleSet } from '../control/types.ts';

const sizes = argList('services', [1000, 10000, 100000]);
const reps = Math.max(1, argNum('reps', 5));
const nftMax = argNum('nft-max', 10000);
const quick = process.argv.includes('--quick');

interface Row {
  services: number;
  applyMs: number;
  patchMs: number;
  iptablesRestoreMs: number;
}

interface Detail extends Row {
  bodyBytes: number;
  responseMs: number;
  holderMs: number;
  patchResponseMs: number;
  patchHolderMs: number;
  patchMode: string;
  partialMs: number;
  partialMode: string;
  iptablesLines: number;
  iptablesBytes: number;
  nftRestoreMs: number | null;
  ratio: number;
}

const NS = `tp-sync${process.pid}`;
let nsMade = false;

function nsUp(): void {
  spawnSync('ip', ['netns', 'del', NS], { stdio: 'ignore' });
  const r = spawnSync('ip', ['netns', 'add', NS], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip netns add ${NS}: ${r.stderr.trim()} (bench:sync needs root for the iptables-restore comparison)`);
  nsMade = true;
}

function nsDown(): void {
  if (!nsMade) return;
  spawnSync('ip', ['netns', 'del', NS], { stdio: 'ignore' });
  nsMade = false;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    nsDown();
    process.exit(130);
  });
}

/** Wall time of `tool` reading the rules file on stdin inside the namespace (process start included, as kube-proxy pays it). */
function restoreMs(tool: string, file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const fd = openSync(file, 'r');
    const t0 = performance.now();
    const p = spawn('ip', ['netns', 'exec', NS, tool], { stdio: [fd, 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => {
      const ms = performance.now() - t0;
      closeSync(fd);
      if (code !== 0) reject(new Error(`${tool} exited ${code}: ${err.trim().split('\n').slice(0, 3).join(' | ')}`));
      else resolve(ms);
    });
  });
}

function patchBody(rs: RuleSet, i: number, r: number) {
  const svc = rs.services[i];
  // new endpoints: a change that reaches the compiled tables
  return { endpoints: (svc.endpoints ?? []).map((e, k) => ({ ...e, address: `10.127.${(r + k) & 255}.${(i + 1) & 255}` })) };
}

async function measure(n: number, dir: string): Promise<Detail> {
  const rs = syntheticRuleSet(n);
  // two rule sets that differ in every service (the target port): each PUT replaces every service,
  // so the API cannot keep any service object in force — the full path, every time
  const bodies = [Buffer.from(JSON.stringify(rs)), Buffer.from(JSON.stringify(syntheticRuleSet(n, { targetPort: 8081 })))];
  // the first with 1% of the services changed (new endpoints): a partial sync
  const partial = structuredClone(rs);
  for (let i = 0; i < n; i += 100) partial.services[i] = { ...partial.services[i], ...patchBody(rs, i, 99) };
  const partialBody = Buffer.from(JSON.stringify(partial));
  const dp = new Dataplane();
  let swapAt = 0;
  dp.holder.onSwap(() => {
    swapAt = performance.now();
  });
  const socket = join(dir, `api-${n}.sock`);
  const srv = await startApi(dp, { socket, bodyLimit: 1 << 30 });
  const c = new ApiClient({ socket });
  let k = 0;
  // the bench's own full collection before each request, then time for V8's concurrent sweeper to
  // finish it: otherwise the request measured pays for the bench's forced gc() (the sweeping of a
  // heap of 100 000 services' objects), which a request in a running tunproxy does not
  const settle = async () => {
    gc();
    await new Promise((r) => setTimeout(r, 200));
  };
  const put = async (body = bodies[k++ % 2]) => {
    await settle();
    const t0 = performance.now();
    const r = await c.request<{ compileMs: number; generation: number; mode: string }>('PUT', '/v1/ruleset', { body, contentType: 'application/json' });
    const done = performance.now();
    if (r.status !== 200) throw new Error(`PUT /v1/ruleset: ${r.status} ${r.text.slice(0, 300)}`);
    return { apply: swapAt - t0, response: done - t0, holder: r.body.compileMs, mode: r.body.mode ?? 'full' };
  };
  try {
    // the first PUT warms the server up (JIT, ajv compile); each next one replaces every service
    await put();
    const puts = [];
    for (let i = 0; i < reps; i++) puts.push(await put());
    if (puts.some((p) => p.mode !== 'full')) throw new Error('a PUT of all-new services did not take the full path');
    // 1% changed, from the first rule set: back to it, then the partial one, alternately
    const partials = [];
    for (let i = 0; i < (quick ? 0 : reps); i++) {
      await put(bodies[0]);
      const p = await put(partialBody);
      partials.push(p);
    }
    const partialMode = partials[0]?.mode ?? '-';
    const patches = [];
    let mode = '';
    // PATCHes as an agent sends them: one after another (20 ms apart), without a forced collection before
    // each (a gc() of a heap holding 100 000 services leaves V8 sweeping and finalizing into the next small
    // request, which then measures the bench's collection); four times the PUTs' repetitions, the median
    await settle();
    for (let r = 0; r <= 4 * reps; r++) {
      const i = (r * 7919 + 1) % n;
      const svc = rs.services[i];
      await new Promise((z) => setTimeout(z, 20));
      const t0 = performance.now();
      const res = await c.request<{ mode: string; compileMs: number }>('PATCH', `/v1/services/${svc.namespace}/${svc.name}`, { body: patchBody(rs, i, r) });
      const done = performance.now();
      if (res.status !== 200) throw new Error(`PATCH: ${res.status} ${res.text.slice(0, 300)}`);
      mode = res.body.mode ?? 'full';
      if (r > 0) patches.push({ apply: swapAt - t0, response: done - t0, holder: res.body.compileMs }); // the first one warms up
    }
    await srv.close();

    const text = writeIptables(rs);
    const file = join(dir, `rules-${n}.txt`);
    writeFileSync(file, text);
    const lines = text.split('\n').length - 1;
    const ipt: number[] = [];
    const nft: number[] = [];
    const restoreReps = quick ? 0 : n >= 100000 ? 1 : Math.min(reps, 3);
    if (!quick) nsUp();
    try {
      for (let i = 0; i < restoreReps; i++) ipt.push(await restoreMs('iptables-legacy-restore', file));
      if (n <= nftMax) for (let i = 0; i < restoreReps; i++) nft.push(await restoreMs('iptables-nft-restore', file));
    } finally {
      nsDown();
      rmSync(file, { force: true });
    }
    const applyMs = median(puts.map((p) => p.apply));
    const iptablesRestoreMs = quick ? NaN : median(ipt);
    return {
      services: n,
      applyMs,
      patchMs: median(patches.map((p) => p.apply)),
      iptablesRestoreMs,
      bodyBytes: bodies[0].length,
      responseMs: median(puts.map((p) => p.response)),
      holderMs: median(puts.map((p) => p.holder)),
      patchResponseMs: median(patches.map((p) => p.response)),
      patchHolderMs: median(patches.map((p) => p.holder)),
      patchMode: mode,
      partialMs: quick ? NaN : median(partials.map((p) => p.apply)),
      partialMode,
      iptablesLines: lines,
      iptablesBytes: text.length,
      nftRestoreMs: nft.length ? median(nft) : null,
      ratio: iptablesRestoreMs / applyMs,
    };
  } finally {
    await srv.close().catch(() => {});
  }
}

const dir = mkdtempSync(join(tmpdir(), 'tp-bench-sync-'));
const details: Detail[] = [];
try {
  for (const n of sizes) {
    process.stderr.write(`bench:sync: ${fmt(n)} services...\n`);
    const d = await measure(n, dir);
    details.push(d);
    process.stderr.write(`  PUT in force ${d.applyMs.toFixed(1)} ms (answered ${d.responseMs.toFixed(1)}, holder ${d.holderMs.toFixed(1)}), PATCH ${d.patchMs.toFixed(2)} ms (${d.patchMode}; holder ${d.patchHolderMs.toFixed(2)})${quick ? '' : `, iptables-restore ${d.iptablesRestoreMs.toFixed(0)} ms: ${d.ratio.toFixed(1)}x`}\n`);
  }
} finally {
  nsDown();
  rmSync(dir, { recursive: true, force: true });
}

const rows: Row[] = details.map((d) => ({ services: d.services, applyMs: round(d.applyMs), patchMs: round(d.patchMs), iptablesRestoreMs: round(d.iptablesRestoreMs) }));
function round(x: number): number {
  return Math.round(x * 100) / 100;
}

const at = (n: number) => details.find((d) => d.services === n);
const bars: string[] = [];
const b10 = at(10000);
if (b10) {
  bars.push(`- 10 000 services in force ${b10.applyMs.toFixed(1)} ms after the PUT (bar <= 100 ms): **${b10.applyMs <= 100 ? 'met' : 'NOT met'}**`);
  bars.push(`- ... ${b10.ratio.toFixed(1)}x faster than iptables-restore of the same rules (bar >= 20x): **${b10.ratio >= 20 ? 'met' : 'NOT met'}**`);
}
const b100 = at(100000);
if (b100) {
  bars.push(`- 100 000 services in force ${b100.applyMs.toFixed(1)} ms after the PUT (bar <= 1 000 ms): **${b100.applyMs <= 1000 ? 'met' : 'NOT met'}**`);
  bars.push(`- single-service PATCH on 100 000 services in force after ${b100.patchMs.toFixed(2)} ms (bar <= 5 ms): **${b100.patchMs <= 5 ? 'met' : 'NOT met'}**`);
}

const md = `# bench:sync — rule set in force after PUT /v1/ruleset, vs iptables-restore

${machine()}; medians of ${reps} (iptables-restore: ${Math.min(reps, 3)}, one at 100 000).

Time from the client sending \`PUT /v1/ruleset\` (JSON in hand) over the Unix socket to the
compiled tables swapped in (transfer, parse, validator with the model, compile, swap), each PUT replacing
every service (two rule sets differing in every service's target port, alternately: the full
path); a PUT of the rule set with 1% of its services changed (the API keeps the services equal
to those in force, so only the changed ones are validated and compiled: a partial sync); a single-service
\`PATCH /v1/services/{ns}/{name}\` (new endpoints) likewise; \`iptables-legacy-restore\` (and
\`iptables-nft-restore\`) of kube-proxy's rules for the same rule set, written by
control/iptables/writer.ts, in a namespace of its own (process start included).
Rule sets: bench/gen.ts syntheticRuleSet(n), 3 endpoints per service, NodePorts on the first 2 000.

| services | body | PUT → in force | PUT answered | of which validate+compile+swap | PUT, 1% changed → in force (mode) | PATCH → in force (mode) | of which validate+compile+swap | iptables rules | iptables-legacy-restore | iptables-nft-restore | restore / PUT |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${details.map((d) => `| ${fmt(d.services)} | ${fmt(d.bodyBytes / 1048576, 1)} MiB | ${fmt(d.applyMs, 1)} ms | ${fmt(d.responseMs, 1)} ms | ${fmt(d.holderMs, 1)} ms | ${fmt(d.partialMs, 1)} ms (${d.partialMode}) | ${fmt(d.patchMs, 2)} ms (${d.patchMode}) | ${fmt(d.patchHolderMs, 2)} ms | ${fmt(d.iptablesLines)} lines | ${fmt(d.iptablesRestoreMs)} ms | ${d.nftRestoreMs === null ? '—' : `${fmt(d.nftRestoreMs)} ms`} | ${fmt(d.ratio, 1)}x |`).join('\n')}

Bars:
${bars.join('\n') || '- (run with 10 000 and 100 000 services to check them)'}

Command: \`npm run bench:sync\` (root: it makes the namespace ${'`tp-sync<pid>`'} for iptables-restore).
`;

if (quick) process.stderr.write('bench:sync --quick: nothing written to bench/results/\n');
else writeResults('sync', rows, md);
