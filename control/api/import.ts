/**
 *   POST /v1/import/iptables    a node's iptables-save (text/plain) → the rule set, the rules not understood
 *   POST /v1/import/kubernetes  kubectl get services,endpointslices -A -o json (or -o yaml) → likewise
 *
 * Query: apply=true puts the result in force (If-Match honoured) — only when
 * everything was understood, unless allowPartial=true; nodeAddresses=a,b,
 * nodeName=, clusterCIDR= say what the input cannot. What neither says
 * about the node comes from the rule set in force.
 */
import type { FastifyInstance } from 'fastify';
import { importIptables, IptablesImportError } from '../iptables/importer.ts';
import { importKubernetes, KubernetesImportError } from '../kubernetes.ts';
import type { KubernetesImportOptions } from '../kubernetes.ts';
import type { RuleSet } from '../types.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';
import { ApiError } from './errors.ts';
import type { ApiContext, ApplyAnswer } from './context.ts';
import { etagOf, parseIfMatch } from './context.ts';

interface ImportQuery {
  apply?: string;
  allowPartial?: string;
  nodeAddresses?: string;
  nodeName?: string;
  clusterCIDR?: string;
}

const bool = { type: 'string', enum: ['true', 'false', '1', '0', ''] } as const;
const querySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    apply: bool,
    allowPartial: bool,
    nodeAddresses: { type: 'string', maxLength: 4096, description: 'comma-separated IPv4 addresses' },
    nodeName: { type: 'string', maxLength: 253 },
    clusterCIDR: { type: 'string', maxLength: 18 },
  },
} as const;

const truthy = (v: string | undefined): boolean => v === 'true' || v === '1' || v === '';

function nodeAddresses(q: ImportQuery): string[] | undefined {
  if (q.nodeAddresses === undefined) return undefined;
  const list = q.nodeAddresses.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const a of list) if (parseIPv4(a) < 0) throw new ApiError(400, 'invalid_request', `nodeAddresses: ${JSON.stringify(a)} is not an IPv4 address`, { errors: [{ path: 'query.nodeAddresses', message: `${JSON.stringify(a)} is not an IPv4 address` }] });
  return list;
}

function bodyText(body: unknown, what: string): string {
  if (typeof body !== 'string' || body.trim() === '') throw new ApiError(400, 'empty_body', `the body is empty: send ${what}`);
  return body;
}

async function maybeApply(ctx: ApiContext, q: ImportQuery, ifMatch: string | string[] | undefined, ruleSet: RuleSet, notUnderstood: number): Promise<ApplyAnswer | null> {
  if (!truthy(q.apply)) return null;
  if (notUnderstood > 0 && !truthy(q.allowPartial)) {
    throw new ApiError(409, 'import_incomplete', `${notUnderstood} rule${notUnderstood === 1 ? ' was' : 's were'} not understood, so the result was not applied (nothing changed): check them with apply=false, then add allowPartial=true to apply what was understood`, { extra: { notUnderstood } });
  }
  return ctx.apply(ruleSet, parseIfMatch(ifMatch, ctx.generation), true);
}

export function registerImportRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.post<{ Querystring: ImportQuery; Body: string }>(
    '/v1/import/iptables',
    { bodyLimit: ctx.bodyLimit, schema: { querystring: querySchema }, config: { raw: true } },
    async (req, reply) => {
      const text = bodyText(req.body, "a node's iptables-save output (content-type text/plain)");
      const inForce = ctx.ruleSet;
      const addrs = nodeAddresses(req.query) ?? inForce?.node.addresses;
      const t0 = performance.now();
      let r;
      try {
        r = importIptables(text, addrs ? { nodeAddresses: addrs } : {});
      } catch (e) {
        if (e instanceof IptablesImportError) throw new ApiError(400, 'import_failed', e.message, { extra: { line: e.line } });
        throw e;
      }
      const importMs = performance.now() - t0;
      const rs = r.ruleSet;
      // what the dump does not say about the node comes from the rule set in force
      if (inForce) rs.node = { ...inForce.node, ...rs.node };
      if (req.query.nodeName !== undefined) rs.node.name = req.query.nodeName;
      if (req.query.clusterCIDR !== undefined) rs.node.clusterCIDR = req.query.clusterCIDR;
      const applied = await maybeApply(ctx, req.query, req.headers['if-match'], rs, r.notUnderstood.length);
      if (applied) reply.header('etag', etagOf(applied.generation));
      return { complete: r.notUnderstood.length === 0, importMs, ruleSet: rs, notUnderstood: r.notUnderstood, warnings: r.warnings, applied };
    },
  );

  app.post<{ Querystring: ImportQuery; Body: string }>(
    '/v1/import/kubernetes',
    { bodyLimit: ctx.bodyLimit, schema: { querystring: querySchema }, config: { raw: true } },
    async (req, reply) => {
      const text = bodyText(req.body, 'the output of kubectl get services,endpointslices -A -o json');
      const node = ctx.ruleSet?.node;
      const o: KubernetesImportOptions = {};
      const name = req.query.nodeName ?? node?.name;
      if (name !== undefined) o.nodeName = name;
      const addrs = nodeAddresses(req.query) ?? node?.addresses;
      if (addrs !== undefined) o.nodeAddresses = addrs;
      const cidr = req.query.clusterCIDR ?? node?.clusterCIDR;
      if (cidr !== undefined) o.clusterCIDR = cidr;
      if (node?.masqueradeAddress !== undefined) o.masqueradeAddress = node.masqueradeAddress;
      if (node?.nodePortRange !== undefined) o.nodePortRange = node.nodePortRange;
      const t0 = performance.now();
      let r;
      try {
        r = importKubernetes(text, o);
      } catch (e) {
        if (e instanceof KubernetesImportError) throw new ApiError(400, 'import_failed', e.message, { extra: { line: e.line } });
        throw e;
      }
      const importMs = performance.now() - t0;
      // what the objects do not say about the node (masqueradeAll, load balancing...) comes from the rule set in force
      if (node) r.ruleSet.node = { ...node, ...r.ruleSet.node };
      const applied = await maybeApply(ctx, req.query, req.headers['if-match'], r.ruleSet, r.notUnderstood.length);
      if (applied) reply.header('etag', etagOf(applied.generation));
      return { complete: r.notUnderstood.length === 0, importMs, objects: r.objects, ruleSet: r.ruleSet, notUnderstood: r.notUnderstood, skipped: r.skipped, warnings: r.warnings, applied };
    },
  );
}
