/**
 * control/api/lazy-validators.ts: fastify's request schemas compiled when first used and, after
 * the server listens, all of them in turn; the validators and their errors the same as fastify's
 * own compiler gives.
 */
import t from 'tap';
import Fastify from 'fastify';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LazyValidators } from '../../control/api/lazy-validators.ts';

const body = { type: 'object', required: ['port'], additionalProperties: false, properties: { port: { type: 'integer', minimum: 1, maximum: 65535 }, name: { type: 'string' } } };
const params = { type: 'object', properties: { ns: { type: 'string', pattern: '^[a-z]+$' } } };
const ajv = { customOptions: { removeAdditional: false, useDefaults: false, coerceTypes: false, allErrors: false } };

function app(lazy: LazyValidators | null) {
  const a = Fastify({ ajv, ...(lazy ? { schemaController: { compilersFactory: { buildValidator: lazy.buildValidator as never } } } : {}) });
  if (lazy) a.addHook('onListen', async () => lazy.warm());
  a.put('/v1/x/:ns', { schema: { body, params } }, async (req) => ({ ok: true, body: req.body }));
  a.get('/v1/y', { schema: { querystring: { type: 'object', properties: { n: { type: 'string', pattern: '^[0-9]+$' } } } } }, async () => ({ ok: true }));
  return a;
}

const cases: Array<{ url: string; method: 'PUT' | 'GET'; payload?: Record<string, unknown> }> = [
  { method: 'PUT', url: '/v1/x/abc', payload: { port: 80 } },
  { method: 'PUT', url: '/v1/x/abc', payload: { port: 70000 } },
  { method: 'PUT', url: '/v1/x/abc', payload: { port: '80' } },
  { method: 'PUT', url: '/v1/x/abc', payload: { port: 80, extra: 1 } },
  { method: 'PUT', url: '/v1/x/abc', payload: {} },
  { method: 'PUT', url: '/v1/x/ABC', payload: { port: 80 } },
  { method: 'GET', url: '/v1/y?n=12' },
  { method: 'GET', url: '/v1/y?n=x' },
];

t.test('nothing compiled at start; each schema when first used; the same answers as fastify\'s own compiler', async (t) => {
  const lazy = new LazyValidators();
  const a = app(lazy);
  const b = app(null);
  await a.ready();
  await b.ready();
  t.equal(lazy.compiled, 0, 'ready without compiling any schema');
  for (const c of cases) {
    const x = await a.inject(c);
    const y = await b.inject(c);
    t.equal(x.statusCode, y.statusCode, `${c.method} ${c.url} ${JSON.stringify(c.payload ?? '')}: status ${y.statusCode}`);
    t.equal(x.body, y.body, 'the same body (errors included)');
  }
  t.equal(lazy.compiled, 3, 'the three schemas used were compiled (body, params, querystring), once each');
  await a.close();
  await b.close();
});

t.test('once the server listens, every schema is compiled in turn', async (t) => {
  const lazy = new LazyValidators();
  const a = app(lazy);
  const dir = mkdtempSync(join(tmpdir(), 'tp-lazy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await a.listen({ path: join(dir, 's.sock') });
  for (let i = 0; i < 50 && lazy.compiled < 3; i++) await new Promise((r) => setImmediate(r));
  t.equal(lazy.compiled, 3, 'all three compiled without a request');
  const r = await a.inject({ method: 'PUT', url: '/v1/x/abc', payload: { port: 0 } });
  t.equal(r.statusCode, 400);
  t.match(r.json(), { message: /port must be >= 1/ });
  await a.close();
});
