/**
 * Nothing a client sends can crash the API or change the rule set in force
 * without a 2xx answer: random bodies, content types, query strings and
 * If-Match headers to every route that takes input; mutated rule sets to
 * PUT /v1/ruleset. After each request: no 5xx, a JSON error for every 4xx,
 * and the generation (and the document) unchanged unless the answer was 2xx.
 */
import t from 'tap';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Dataplane } from '../../control/dataplane.ts';
import { startApi } from '../../control/server.ts';
import { ApiClient } from '../../control/client.ts';
import type { RuleSet } from '../../control/types.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const dir = mkdtempSync(join(tmpdir(), 'tp-api-fuzz-'));
const sock = join(dir, 'api.sock');
const dp = new Dataplane();
dp.holder.apply(structuredClone(golden));
const srv = await startApi(dp, { socket: sock, bodyLimit: 256 * 1024 });
const c = new ApiClient({ socket: sock });
t.teardown(async () => {
  await srv.close();
  rmSync(dir, { recursive: true, force: true });
});

const routes: Array<[string, string]> = [
  ['PUT', '/v1/ruleset'],
  ['PATCH', '/v1/services'],
  ['PUT', '/v1/services/default/nginx'],
  ['PATCH', '/v1/services/default/nginx'],
  ['DELETE', '/v1/services/default/none'],
  ['PUT', '/v1/services/a/b'],
  ['POST', '/v1/import/iptables'],
  ['POST', '/v1/import/kubernetes'],
  ['POST', '/v1/trace'],
  ['GET', '/v1/conntrack'],
  ['DELETE', '/v1/conntrack'],
  ['GET', '/v1/services'],
];

const bodies = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 200 }),
  fc.constantFrom('{', '[', '{"apiVersion":', 'null', '""', '{"__proto__":{"x":1}}', '{"services":[{"ports":[{}]}]}', 'services:\n  - name: &a [*a]'),
  fc.record({ upsert: fc.array(fc.record({ namespace: fc.constantFrom('a', 'B', ''), name: fc.string({ maxLength: 5 }), ports: fc.array(fc.record({ name: fc.string({ maxLength: 3 }), protocol: fc.constantFrom('TCP', 'UDP', 'X'), port: fc.integer({ min: -1, max: 70000 }) }), { maxLength: 2 }) }), { maxLength: 2 }) }).map((v) => JSON.stringify(v)),
);
const types = fc.constantFrom('application/json', 'application/merge-patch+json', 'application/yaml', 'text/plain', 'application/xml', 'application/octet-stream');
const queries = fc.dictionary(fc.constantFrom('apply', 'allowPartial', 'nodeAddresses', 'protocol', 'src', 'port', 'format', 'all', 'limit', 'service', 'x'), fc.string({ maxLength: 12 }), { maxKeys: 3 });
const ifMatch = fc.option(fc.oneof(fc.constantFrom('*', '"1"', 'W/"1"', '', '"999"', ','), fc.string({ maxLength: 8 })), { nil: undefined });

t.test('random requests to every route: no 5xx, JSON errors, no change without a 2xx', async (t) => {
  let changed = 0;
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...routes), bodies, types, queries, ifMatch, async ([method, path], body, type, query, im) => {
      const gen = dp.holder.generation;
      const doc = JSON.stringify(dp.holder.ruleSet);
      const headers: Record<string, string> = {};
      if (im !== undefined) headers['if-match'] = im;
      const r = await c.request(method, path, { body: method === 'GET' ? undefined : body, contentType: type, query, headers });
      if (r.status >= 500) throw new Error(`${method} ${path} answered ${r.status}: ${r.text}`);
      if (r.status >= 400) {
        refused++;
        const b = r.body as { error?: unknown; message?: unknown };
        if (typeof b !== 'object' || typeof b.error !== 'string' || typeof b.message !== 'string') throw new Error(`${r.status} without a JSON error: ${r.text}`);
        if (dp.holder.generation !== gen || JSON.stringify(dp.holder.ruleSet) !== doc) throw new Error(`${method} ${path} changed the rule set but answered ${r.status}`);
      } else if (dp.holder.generation !== gen) changed++;
    }),
    { numRuns: 300, seed: 42 },
  );
  t.ok(refused > 200, `${refused} refused`);
  t.comment(`${changed} accepted changes`);
  t.equal(dp.tables!.generation, dp.holder.generation, 'the tables in force are the rule set in force');
});

t.test('mutated rule sets: in force with a 2xx, else nothing changes', async (t) => {
  const paths = fc.constantFrom('apiVersion', 'node.addresses', 'node.clusterCIDR', 'node.nodePortRange', 'services.0.clusterIP', 'services.1.ports.0.port', 'services.1.ports.0.nodePort', 'services.2.endpoints.0.address', 'services.3.name', 'services.4.ports.0.protocol', 'services.5.sessionAffinity', 'services.6.endpoints');
  const values = fc.oneof(fc.constant(undefined), fc.constant(null), fc.integer({ min: -2, max: 70000 }), fc.constantFrom('10.32.0.10', '10.32.9.9', 'None', 'TCP', 'x', '', '30080', 'ClientIP'), fc.boolean(), fc.constant([]));
  let ok = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(paths, values), { minLength: 1, maxLength: 3 }), async (edits) => {
      const rs = structuredClone(golden) as unknown as Record<string, unknown>;
      for (const [p, v] of edits) {
        const keys = p.split('.');
        let o = rs as Record<string, unknown>;
        for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
        if (v === undefined) delete o[keys[keys.length - 1]];
        else o[keys[keys.length - 1]] = v;
      }
      const gen = dp.holder.generation;
      const doc = JSON.stringify(dp.holder.ruleSet);
      const r = await c.request('PUT', '/v1/ruleset', { body: rs });
      if (r.status >= 500) throw new Error(`${r.status}: ${r.text}`);
      if (r.status === 200) {
        ok++;
        if (dp.holder.generation !== gen + 1 || JSON.stringify(dp.holder.ruleSet) !== JSON.stringify(rs)) throw new Error('a 200 without the rule set in force');
      } else if (dp.holder.generation !== gen || JSON.stringify(dp.holder.ruleSet) !== doc) throw new Error(`changed with ${r.status}`);
    }),
    { numRuns: 200, seed: 7 },
  );
  t.ok(ok > 0, `${ok} of 200 accepted`);
});
