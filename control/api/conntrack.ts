/**
 *   GET    /v1/conntrack[?filters][&format=text|json]   the tracked flows (text: `conntrack -L` lines)
 *   DELETE /v1/conntrack?filters                         remove the matching flows (all=true for every flow)
 *
 * Filters (all must hold), in conntrack(8)'s terms:
 *   protocol   tcp, udp, sctp, icmp (or the number)
 *   src, dst   the original direction's source / destination address (conntrack -s / -d)
 *   sport, dport  the original direction's ports (--sport / --dport)
 *   address    any address of the flow, either direction;  port: any port of the flow
 *   service    kube-proxy's service-port name, or "ns/name" for all its ports
 *   endpoint   the endpoint (reply source): "10.64.1.7" or "10.64.1.7:8080"
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';
import { formatConntrackL, stateName } from '../../dataplane/conntrack.ts';
import { formatIPv4, parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { ApiError } from './errors.ts';
import type { ApiContext } from './context.ts';

export interface ConntrackQuery {
  protocol?: string;
  src?: string;
  dst?: string;
  sport?: string;
  dport?: string;
  address?: string;
  port?: string;
  service?: string;
  endpoint?: string;
  format?: string;
  limit?: string;
  counters?: string;
  all?: string;
}

const ipv4 = { type: 'string', format: 'ipv4' } as const;
const port = { type: 'string', pattern: '^[0-9]{1,5}$' } as const;
export const conntrackQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    protocol: { type: 'string', pattern: '^(tcp|udp|sctp|icmp|TCP|UDP|SCTP|ICMP|6|17|132|1)$' },
    src: ipv4,
    dst: ipv4,
    sport: port,
    dport: port,
    address: ipv4,
    port,
    service: { type: 'string', minLength: 1, maxLength: 300 },
    endpoint: { type: 'string', pattern: '^[0-9.]+(:[0-9]{1,5})?$' },
    format: { enum: ['json', 'text'] },
    limit: { type: 'string', pattern: '^[0-9]{1,9}$' },
    counters: { enum: ['true', 'false', '1', '0', ''] },
    all: { enum: ['true', 'false', '1', '0', ''] },
  },
} as const;

const PROTOS: Record<string, number> = { tcp: PROTO_TCP, udp: PROTO_UDP, sctp: PROTO_SCTP, icmp: PROTO_ICMP, '6': PROTO_TCP, '17': PROTO_UDP, '132': PROTO_SCTP, '1': PROTO_ICMP };

function portOf(v: string | undefined, name: string): number {
  if (v === undefined) return -1;
  const n = Number(v);
  if (n > 65535) throw new ApiError(400, 'invalid_request', `${name}: ${v} is not a port (0-65535)`, { errors: [{ path: `query.${name}`, message: `${v} is not a port (0-65535)` }] });
  return n;
}

/** A predicate over flows from the query; `filtered` is false when no filter was given. */
export function conntrackFilter(q: ConntrackQuery): { pred: (e: ConntrackEntry) => boolean; filtered: boolean } {
  const proto = q.protocol === undefined ? -1 : PROTOS[q.protocol.toLowerCase()];
  const addr = (v: string | undefined) => (v === undefined ? -1 : parseIPv4(v));
  const src = addr(q.src);
  const dst = addr(q.dst);
  const any = addr(q.address);
  const sport = portOf(q.sport, 'sport');
  const dport = portOf(q.dport, 'dport');
  const anyPort = portOf(q.port, 'port');
  let epAddr = -1;
  let epPort = -1;
  if (q.endpoint !== undefined) {
    const [a, p] = q.endpoint.split(':');
    epAddr = parseIPv4(a);
    if (epAddr < 0) throw new ApiError(400, 'invalid_request', `endpoint: ${JSON.stringify(q.endpoint)} is not an IPv4 address or address:port`, { errors: [{ path: 'query.endpoint', message: 'not an IPv4 address or address:port' }] });
    epPort = p === undefined ? -1 : portOf(p, 'endpoint');
  }
  const svc = q.service;
  const svcPrefix = svc === undefined ? '' : svc + ':';
  const filtered = proto >= 0 || src >= 0 || dst >= 0 || any >= 0 || sport >= 0 || dport >= 0 || anyPort >= 0 || epAddr >= 0 || svc !== undefined;
  const pred = (e: ConntrackEntry): boolean => {
    if (proto >= 0 && e.proto !== proto) return false;
    if (src >= 0 && e.origSrc !== src) return false;
    if (dst >= 0 && e.origDst !== dst) return false;
    if (sport >= 0 && e.origSport !== sport) return false;
    if (dport >= 0 && e.origDport !== dport) return false;
    if (any >= 0 && e.origSrc !== any && e.origDst !== any && e.replySrc !== any && e.replyDst !== any) return false;
    if (anyPort >= 0 && e.origSport !== anyPort && e.origDport !== anyPort && e.replySport !== anyPort && e.replyDport !== anyPort) return false;
    if (epAddr >= 0 && (e.endpointAddr !== epAddr || (epPort >= 0 && e.endpointPort !== epPort))) return false;
    if (svc !== undefined && e.serviceName !== svc && !e.serviceName.startsWith(svcPrefix)) return false;
    return true;
  };
  return { pred, filtered };
}

const PROTO_NAMES: Record<number, string> = { [PROTO_TCP]: 'tcp', [PROTO_UDP]: 'udp', [PROTO_SCTP]: 'sctp', [PROTO_ICMP]: 'icmp' };

/** One flow as JSON (addresses as text, times in ms relative to now). */
export function flowJson(e: ConntrackEntry, now: number) {
  return {
    protocol: PROTO_NAMES[e.proto] ?? String(e.proto),
    state: stateName(e.proto, e.state),
    remainingMs: Math.max(0, Math.round(e.expires - now)),
    ageMs: Math.round(now - e.created),
    original: { src: formatIPv4(e.origSrc), dst: formatIPv4(e.origDst), sport: e.origSport, dport: e.origDport, packets: e.origPackets, bytes: e.origBytes },
    reply: { src: formatIPv4(e.replySrc), dst: formatIPv4(e.replyDst), sport: e.replySport, dport: e.replyDport, packets: e.replyPackets, bytes: e.replyBytes },
    seenReply: e.seenReply,
    assured: e.assured,
    service: e.serviceName,
    endpoint: `${formatIPv4(e.endpointAddr)}:${e.endpointPort}`,
    masquerade: e.masquerade,
  };
}

const truthy = (v: string | undefined): boolean => v === 'true' || v === '1' || v === '';

function wantsText(req: FastifyRequest<{ Querystring: ConntrackQuery }>): boolean {
  if (req.query.format !== undefined) return req.query.format === 'text';
  const accept = req.headers.accept ?? '';
  return /text\/plain/.test(accept) && !/application\/json/.test(accept);
}

export function registerConntrackRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: ConntrackQuery }>('/v1/conntrack', { schema: { querystring: conntrackQuerySchema } }, async (req, reply) => {
    const ct = ctx.dp.pipeline.conntrack;
    const now = ct.now();
    const { pred } = conntrackFilter(req.query);
    const limit = req.query.limit === undefined ? Infinity : Number(req.query.limit);
    const text = wantsText(req);
    const counters = truthy(req.query.counters);
    let shown = 0;
    let matched = 0;
    const lines: string[] = [];
    const flows: ReturnType<typeof flowJson>[] = [];
    for (const e of ct.entries(now)) {
      if (!pred(e)) continue;
      matched++;
      if (shown >= limit) continue;
      shown++;
      if (text) lines.push(formatConntrackL(e, now, { counters }));
      else flows.push(flowJson(e, now));
    }
    reply.header('x-flow-count', String(shown));
    reply.header('x-flow-matched', String(matched));
    if (text) {
      return reply.type('text/plain; charset=utf-8').send(lines.length === 0 ? '' : lines.join('\n') + '\n');
    }
    return { entries: ct.size, max: ct.maxEntries, matched, shown, flows };
  });

  app.delete<{ Querystring: ConntrackQuery }>('/v1/conntrack', { schema: { querystring: conntrackQuerySchema } }, async (req) => {
    const ct = ctx.dp.pipeline.conntrack;
    const { pred, filtered } = conntrackFilter(req.query);
    if (!filtered && !truthy(req.query.all)) {
      throw new ApiError(400, 'no_filter', 'DELETE /v1/conntrack without a filter would remove every flow: give a filter (protocol, src, dst, sport, dport, address, port, service, endpoint), or all=true to flush the table');
    }
    if (req.query.format !== undefined || req.query.limit !== undefined) throw new ApiError(400, 'invalid_request', 'format and limit apply to GET only');
    const deleted = ct.deleteWhere(pred);
    return { deleted, entries: ct.size };
  });
}
