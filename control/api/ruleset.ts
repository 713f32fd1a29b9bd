/**
 * The rule set and its services:
 *
 *   GET    /v1/ruleset                       the rule set in force; ETag: "<generation>"
 *   PUT    /v1/ruleset                       replace it (If-Match: "<generation>" for safe updates)
 *   GET    /v1/ruleset/schema                its JSON schema
 *   GET    /v1/services[?namespace=NS]       the services
 *   GET    /v1/services/{ns}/{name}          one service; ETag
 *   PUT    /v1/services/{ns}/{name}          add or replace one service
 *   PATCH  /v1/services/{ns}/{name}          change one service: a JSON merge patch (RFC 7386) of its fields
 *   DELETE /v1/services/{ns}/{name}          delete one service
 *   PATCH  /v1/services                      a batch: {"upsert": [service...], "delete": [{namespace, name}...],
 *                                            "endpoints": [{namespace, name, "set": [endpoint...], "remove": [address...]}]}
 *
 * Every change builds the next rule set (the services not touched are
 * shared, never modified in place) and goes through the same validation,
 * compile and swap as a whole PUT: it is in force when the answer comes, or
 * nothing changed.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ruleSetSchema } from '../schema.ts';
import type { Endpoint, RuleSet, Service } from '../types.ts';
import { validateRuleSet } from '../validate.ts';
import { ApiError, ajvErrors } from './errors.ts';
import type { ApiContext } from './context.ts';
import { etagOf, parseIfMatch } from './context.ts';

const serviceSchema = ruleSetSchema.properties.services.items;
const endpointSchema = serviceSchema.properties.endpoints.items;
const dnsLabel = serviceSchema.properties.namespace;

const serviceRefSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['namespace', 'name'],
  properties: { namespace: dnsLabel, name: dnsLabel },
} as const;

const paramsSchema = serviceRefSchema;

/** PUT /v1/services/{ns}/{name}: a service; namespace and name may be left out (the URL says them) */
const servicePutSchema = { ...serviceSchema, required: ['ports'] } as const;

/** PATCH /v1/services/{ns}/{name}: a merge patch of the service's fields (null removes an optional field) */
const mergePatchSchema = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: Object.fromEntries(Object.keys(serviceSchema.properties).map((k) => [k, {}])),
} as const;

const batchSchema = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    upsert: { type: 'array', items: serviceSchema },
    delete: { type: 'array', items: serviceRefSchema },
    endpoints: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['namespace', 'name'],
        properties: {
          namespace: dnsLabel,
          name: dnsLabel,
          set: { type: 'array', items: endpointSchema, description: 'add these endpoints, or replace the endpoint of the same address' },
          remove: { type: 'array', items: { type: 'string', format: 'ipv4' }, description: 'remove the endpoints of these addresses' },
        },
      },
    },
  },
} as const;

interface Ref {
  namespace: string;
  name: string;
}
interface Batch {
  upsert?: Service[];
  delete?: Ref[];
  endpoints?: Array<Ref & { set?: Endpoint[]; remove?: string[] }>;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces. Never modifies its inputs. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return patch;
  const out: Obj = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function bodyRejected(req: FastifyRequest, what: string): never {
  const errors = ajvErrors((req.validationError as unknown as { validation: [] }).validation);
  throw new ApiError(400, 'invalid_request', `the ${what} ${errors.length === 1 ? 'has an error' : `has ${errors.length} errors`}; nothing changed. ${errors.slice(0, 3).map((x) => `${x.path}: ${x.message}`).join('; ')}`, { errors });
}

function applied(reply: FastifyReply, r: { generation: number }): void {
  reply.header('etag', etagOf(r.generation));
}

export function registerRuleSetRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.get('/v1/ruleset/schema', async () => ruleSetSchema);

  app.get('/v1/ruleset', async (req, reply) => {
    const rs = ctx.ruleSet;
    if (rs === null) throw new ApiError(404, 'no_rule_set', 'no rule set is in force yet: PUT /v1/ruleset (tunproxy apply -f FILE)');
    const etag = etagOf(ctx.generation);
    reply.header('etag', etag);
    if (req.headers['if-none-match'] === etag) return reply.code(304).send();
    return rs;
  });

  // One pass over the body: no schema pass before the validator, which refuses everything the
  // schema refuses (test/unit/ruleset-schema.test.ts proves it on random mutations) and builds the
  // model as it checks. The schema stays published at GET /v1/ruleset/schema.
  // The JSON text of the body is kept (config.keepJsonText): the state directory saves it as it came
  // once the rule set is in force, instead of stringifying the rule set again.
  app.put('/v1/ruleset', { bodyLimit: ctx.bodyLimit, config: { keepJsonText: true } }, async (req, reply) => {
    const r = await ctx.apply(req.body, parseIfMatch(req.headers['if-match'], ctx.generation), true, undefined, req.jsonText ?? undefined);
    applied(reply, r);
    return r;
  });

  app.get<{ Querystring: { namespace?: string } }>(
    '/v1/services',
    { schema: { querystring: { type: 'object', additionalProperties: false, properties: { namespace: dnsLabel } } } },
    async (req, reply) => {
      const rs = ctx.requireRuleSet();
      reply.header('etag', etagOf(ctx.generation));
      const ns = req.query.namespace;
      return { generation: ctx.generation, services: ns === undefined ? rs.services : rs.services.filter((s) => s.namespace === ns) };
    },
  );

  app.get<{ Params: Ref }>('/v1/services/:namespace/:name', { schema: { params: paramsSchema } }, async (req, reply) => {
    const rs = ctx.requireRuleSet();
    const i = ctx.holder.indexOf(req.params.namespace, req.params.name);
    if (i < 0) throw notFound(req.params, ctx.generation);
    reply.header('etag', etagOf(ctx.generation));
    return rs.services[i];
  });

  app.put<{ Params: Ref; Body: Partial<Service> }>(
    '/v1/services/:namespace/:name',
    { bodyLimit: ctx.bodyLimit, schema: { params: paramsSchema, body: servicePutSchema }, attachValidation: true },
    async (req, reply) => {
      const rs = ctx.requireRuleSet();
      const { namespace, name } = req.params;
      if (req.validationError && req.validationError.validationContext !== 'body') throw req.validationError;
      const body = req.body;
      if (isObj(body)) {
        for (const f of ['namespace', 'name'] as const) {
          if (body[f] !== undefined && body[f] !== req.params[f]) throw new ApiError(400, 'name_mismatch', `the body's ${f} ${JSON.stringify(body[f])} is not the URL's ${JSON.stringify(req.params[f])}: a service cannot be renamed (DELETE it and PUT the new one)`);
        }
      }
      const svc = { namespace, name, ...(isObj(body) ? body : {}) } as Service;
      const i = ctx.holder.indexOf(namespace, name);
      const services = rs.services.slice();
      if (i < 0) services.push(svc);
      else services[i] = svc;
      const next = { ...rs, services };
      if (req.validationError) {
        // the errors of this service alone, its fields named as in the body
        const v = validateRuleSet({ apiVersion: rs.apiVersion, node: rs.node, services: [svc] });
        const errors = v.ok ? ajvErrors((req.validationError as unknown as { validation: [] }).validation) : v.errors.map((e) => ({ path: e.path.replace(/^services\[0\]\.?/, '') || '(root)', message: e.message }));
        throw new ApiError(400, 'rule_set_rejected', `the service was rejected (${errors.length} error${errors.length === 1 ? '' : 's'}); the rule set in force is unchanged. ${errors.slice(0, 3).map((x) => `${x.path}: ${x.message}`).join('; ')}`, { errors });
      }
      const r = await ctx.apply(next, parseIfMatch(req.headers['if-match'], ctx.generation), false, i < 0 ? undefined : i);
      applied(reply, r);
      reply.code(i < 0 ? 201 : 200);
      return { ...r, service: `${namespace}/${name}`, change: i < 0 ? 'added' : 'replaced' };
    },
  );

  app.patch<{ Params: Ref; Body: Obj }>(
    '/v1/services/:namespace/:name',
    { schema: { params: paramsSchema, body: mergePatchSchema }, attachValidation: true },
    async (req, reply) => {
      if (req.validationError) {
        if (req.validationError.validationContext !== 'body') throw req.validationError;
        bodyRejected(req, 'merge patch (an object of the service\'s fields; null removes a field)');
      }
      const rs = ctx.requireRuleSet();
      const { namespace, name } = req.params;
      const i = ctx.holder.indexOf(namespace, name);
      if (i < 0) throw notFound(req.params, ctx.generation);
      for (const f of ['namespace', 'name'] as const) {
        if (f in req.body && req.body[f] !== req.params[f]) throw new ApiError(400, 'name_mismatch', `the patch changes ${f} to ${JSON.stringify(req.body[f])}: a service cannot be renamed (DELETE it and PUT the new one)`);
      }
      const services = rs.services.slice();
      services[i] = mergePatch(rs.services[i], req.body) as Service;
      // the holder is told which service changed: no walk over every service to find it
      const r = await ctx.apply({ ...rs, services }, parseIfMatch(req.headers['if-match'], ctx.generation), false, i);
      applied(reply, r);
      return { ...r, service: `${namespace}/${name}`, change: 'patched' };
    },
  );

  app.delete<{ Params: Ref }>('/v1/services/:namespace/:name', { schema: { params: paramsSchema } }, async (req, reply) => {
    const rs = ctx.requireRuleSet();
    const { namespace, name } = req.params;
    const i = ctx.holder.indexOf(namespace, name);
    if (i < 0) throw notFound(req.params, ctx.generation);
    const services = rs.services.slice();
    services.splice(i, 1);
    const r = await ctx.apply({ ...rs, services }, parseIfMatch(req.headers['if-match'], ctx.generation));
    applied(reply, r);
    return { ...r, service: `${namespace}/${name}`, change: 'deleted' };
  });

  app.patch<{ Body: Batch }>('/v1/services', { bodyLimit: ctx.bodyLimit, schema: { body: batchSchema }, attachValidation: true }, async (req, reply) => {
    if (req.validationError) bodyRejected(req, 'batch ({"upsert": [...], "delete": [...], "endpoints": [...]})');
    const rs = ctx.requireRuleSet();
    const b = req.body;
    const services = rs.services.slice();
    const index = new Map<string, number>();
    services.forEach((s, i) => index.set(`${s.namespace}/${s.name}`, i));
    const changes: Array<{ service: string; change: string }> = [];
    const removed = new Set<number>();
    (b.delete ?? []).forEach((ref, k) => {
      const key = `${ref.namespace}/${ref.name}`;
      const i = index.get(key);
      if (i === undefined || removed.has(i)) throw new ApiError(404, 'no_such_service', `delete[${k}]: there is no service ${key} in generation ${ctx.generation}; nothing changed`, { extra: { generation: ctx.generation } });
      removed.add(i);
      changes.push({ service: key, change: 'deleted' });
    });
    const appended: Service[] = [];
    for (const svc of b.upsert ?? []) {
      const key = `${svc.namespace}/${svc.name}`;
      const i = index.get(key);
      if (i !== undefined && !removed.has(i)) {
        services[i] = svc;
        changes.push({ service: key, change: 'replaced' });
      } else {
        index.set(key, services.length + appended.length);
        appended.push(svc);
        changes.push({ service: key, change: 'added' });
      }
    }
    const all = appended.length > 0 ? services.concat(appended) : services;
    (b.endpoints ?? []).forEach((op, k) => {
      const key = `${op.namespace}/${op.name}`;
      const i = index.get(key);
      if (i === undefined || removed.has(i)) throw new ApiError(404, 'no_such_service', `endpoints[${k}]: there is no service ${key}; nothing changed`, { extra: { generation: ctx.generation } });
      const eps = (all[i].endpoints ?? []).slice();
      for (const [j, addr] of (op.remove ?? []).entries()) {
        const at = eps.findIndex((e) => e.address === addr);
        if (at < 0) throw new ApiError(404, 'no_such_endpoint', `endpoints[${k}].remove[${j}]: ${key} has no endpoint ${addr}; nothing changed`);
        eps.splice(at, 1);
      }
      for (const ep of op.set ?? []) {
        const at = eps.findIndex((e) => e.address === ep.address);
        if (at < 0) eps.push(ep);
        else eps[at] = ep;
      }
      all[i] = { ...all[i], endpoints: eps };
      changes.push({ service: key, change: 'endpoints' });
    });
    const next = { ...rs, services: removed.size > 0 ? all.filter((_, i) => !removed.has(i)) : all };
    const r = await ctx.apply(next, parseIfMatch(req.headers['if-match'], ctx.generation));
    applied(reply, r);
    return { ...r, changes };
  });
}

function notFound(ref: Ref, generation: number): ApiError {
  return new ApiError(404, 'no_such_service', `there is no service ${ref.namespace}/${ref.name} in the rule set in force (generation ${generation}): GET /v1/services lists them; PUT /v1/services/${ref.namespace}/${ref.name} adds it`, { extra: { generation } });
}
