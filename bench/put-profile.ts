/**
 * npm run bench:put-profile [-- --services 10000 --reps 5]
 *
 * Where the time of a full `PUT /v1/ruleset` goes, stage by stage, on one
 * synthetic rule set (bench/gen.ts): the body read over a Unix socket
 * (a bare node:http server that only reads the body), JSON.parse, the JSON
 * schema pass (ajv, what fastify ran before the validator until this issue;
 * shown for comparison, no longer on the PUT path), validation with the
 * model, compile, encoding the tables to their wire form (shared arrays, what
 * the control worker sends to the packet thread), the holder's apply (all of
 * validate, model, compile and swap), the state save (JSON.stringify + write
 * to a temporary file), and the whole PUT through the real API server until
 * the swap listener runs. GC time is measured over validate + compile.
 * Medians of --reps runs, in ms; `node --expose-gc` makes the runs start
 * from a collected heap.
 */
import { createServer, request } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { createRequire } from 'node:module';
import { syntheticRuleSet } from './gen.ts';
import { argNum, median } from './common.ts';
import { validateRuleSet } from '../control/validate.ts';
import { compile } from '../control/compile.ts';
import { RuleSetHolder } from '../control/runtime.ts';
import { ruleSetSchema } from '../control/schema.ts';
import { shareTables, TablesEncoder } from '../dataplane/tables-wire.ts';
import { Dataplane } from '../control/dataplane.ts';
import { startApi } from '../control/server.ts';
import { ApiClient } from '../control/client.ts';

const n = argNum('services', 10000);
const reps = Math.max(1, argNum('reps', 5));
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
const require = createRequire(import.meta.url);
const Ajv = require('ajv');
const addFormats = require('ajv-formats');
const ajv = new Ajv({ allErrors: true, strict: false, coerceTypes: 'array', useDefaults: true, removeAdditional: true });
addFormats(ajv);
const schemaCheck = ajv.compile(ruleSetSchema);

const rs = syntheticRuleSet(n);
const text = JSON.stringify(rs);
const dir = mkdtempSync(join(tmpdir(), 'tp-putprof-'));
const sock = join(dir, 'body.sock');

let gcMs = 0;
const obs = new PerformanceObserver((l) => {
  for (const e of l.getEntries()) gcMs += e.duration;
});
obs.observe({ entryTypes: ['gc'] });

function time<T>(fn: () => T): [number, T] {
  const t0 = performance.now();
  const r = fn();
  return [performance.now() - t0, r];
}

/** a bare server that reads the body and answers: the body read alone */
const bare = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const s = Buffer.concat(chunks).toString('utf8');
    res.end(String(s.length));
  });
});
await new Promise<void>((r) => bare.listen(sock, r));
function bodyRead(): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ socketPath: sock, method: 'PUT', path: '/', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(performance.now() - t0));
    });
    req.on('error', reject);
    req.end(text);
  });
}

const rows: Record<string, number[]> = {};
const add = (k: string, v: number) => (rows[k] ??= []).push(v);

// the whole PUT through the API server, until the swap listener runs
const dp = new Dataplane({});
let swapAt = 0;
dp.holder.onSwap(() => {
  swapAt = performance.now();
});
const apiSock = join(dir, 'api.sock');
const api = await startApi(dp, { socket: apiSock, bodyLimit: 1 << 30 });
const client = new ApiClient({ socket: apiSock });

for (let r = 0; r < reps; r++) {
  gc();
  add('body read (HTTP, Unix socket)', await bodyRead());
  gc();
  const [parseMs, doc] = time(() => JSON.parse(text));
  add('JSON.parse', parseMs);
  const [schemaMs] = time(() => schemaCheck(JSON.parse(text)));
  add('schema pass (ajv; dropped)', schemaMs - parseMs);
  gc();
  await new Promise((r) => setTimeout(r, 20));
  gcMs = 0;
  const [valMs, v] = time(() => validateRuleSet(doc));
  if (!v.ok) throw new Error('the synthetic rule set is invalid');
  add('validate + model', valMs);
  const input = (v as { model?: unknown }).model ?? v.ruleSet;
  const [compMs, tables] = time(() => compile(input as Parameters<typeof compile>[0]));
  add('compile', compMs);
  await new Promise((r) => setTimeout(r, 20)); // let the observer see the GC entries
  add('GC during validate + compile', gcMs);
  const [shareMs, shared] = time(() => shareTables(tables));
  const [encMs] = time(() => new TablesEncoder().encode(shared));
  add('tables to shared memory + wire encode', shareMs + encMs);
  gc();
  const h = new RuleSetHolder({ incremental: false });
  const [applyMs] = time(() => h.apply(doc));
  add('holder.apply (validate, model, compile, swap)', applyMs);
  const [saveMs] = time(() => writeFileSync(join(dir, 'ruleset.json'), JSON.stringify(doc, null, 1) + '\n'));
  add('state save (stringify + write)', saveMs);
  gc();
  // another target port on every service each time: a full apply, not the reuse of the services in force
  const body = syntheticRuleSet(n, { targetPort: 8080 + r + 1 });
  const t0 = performance.now();
  await client.request('PUT', '/v1/ruleset', { body });
  add('whole PUT through the API, to the swap', swapAt - t0);
}
obs.disconnect();
console.log(`PUT of ${n} services (${(text.length / 1e6).toFixed(1)} MB of JSON), medians of ${reps}, load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
for (const [k, v] of Object.entries(rows)) console.log(`  ${k.padEnd(48)} ${median(v).toFixed(1).padStart(8)} ms`);
bare.close();
await api.close().catch(() => {});
rmSync(dir, { recursive: true, force: true });
process.exit(0);
