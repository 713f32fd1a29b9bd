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
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { unpackChunk, formatFlowL } from '../worker/flows.ts';
import type { FlowRecord } from '../worker/flows.ts';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';
import { stateName } from '../../dataplane/conntrack.ts';
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

/** A predicate over flows from the query (`pred6`: over IPv6 flows); `filtered` is false when no filter was given. */
export function conntrackFilter(q: ConntrackQuery): { pred: (e: ConntrackEntry) => boolean; pred6: (e: ConntrackEntry) => boolean; filtered: boolean } {
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
  // an IPv6 flow has no IPv4 address: a filter on addresses matches none; the others apply as they are
  const pred6 = src >= 0 || dst >= 0 || any >= 0 || epAddr >= 0 ? () => false : pred;
  return { pred, pred6, filtered };
}

const PROTO_NAMES: Record<number, string> = { [PROTO_TCP]: 'tcp', [PROTO_UDP]: 'udp', [PROTO_SCTP]: 'sctp', [PROTO_ICMP]: 'icmp' };

/** One flow as JSON (addresses as text, times in ms relative to now). */
export function flowJson(e: ConntrackEntry, now: number) {
  const a6 = (e as unknown as FlowRecord).addrs6 ?? null;
  return {
    protocol: a6 !== null && e.proto === PROTO_ICMP ? 'icmpv6' : (PROTO_NAMES[e.proto] ?? String(e.proto)),
    state: stateName(e.proto, e.state),
    remainingMs: Math.max(0, Math.round(e.expires - now)),
    ageMs: Math.round(now - e.created),
    original: { src: a6?.origSrc ?? formatIPv4(e.origSrc), dst: a6?.origDst ?? formatIPv4(e.origDst), sport: e.origSport, dport: e.origDport, packets: e.origPackets, bytes: e.origBytes },
    reply: { src: a6?.replySrc ?? formatIPv4(e.replySrc), dst: a6?.replyDst ?? formatIPv4(e.replyDst), sport: e.replySport, dport: e.replyDport, packets: e.replyPackets, bytes: e.replyBytes },
    seenReply: e.seenReply,
    assured: e.assured,
    service: e.serviceName,
    endpoint: a6 !== null ? `[${a6.replySrc}]:${e.endpointPort}` : `${formatIPv4(e.endpointAddr)}:${e.endpointPort}`,
    masquerade: e.masquerade,
  };
}

const truthy = (v: string | undefined): boolean => v === 'true' || v === '1' || v === '';

function wantsText(req: FastifyRequest<{ Querystring: ConntrackQuery }>): boolean {
  if (req.query.format !== undefined) return req.query.format === 'text';
  const accept = req.headers.accept ?? '';
  return /text\/plain/.test(accept) && !/application\/json/.test(accept);
}

/**
 * GET streams its answer (chunked): the packet side hands the flows over in
 * slices (control/worker/flows.ts), each formatted here and written before
 * the next is asked for, so a listing of 1 M flows is never built whole,
 * neither on the packet thread nor here. The counts come last: in the JSON
 * after the flows, and as HTTP trailers (x-flow-count, x-flow-matched).
 */
export function registerConntrackRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: ConntrackQuery }>('/v1/conntrack', { schema: { querystring: conntrackQuerySchema } }, async (req, reply) => {
    conntrackFilter(req.query); // a bad filter answers 400 before anything is streamed
    const limit = req.query.limit === undefined ? Infinity : Number(req.query.limit);
    const text = wantsText(req);
    const counters = truthy(req.query.counters);
    let entries = 0;
    let max = 0;
    if (!text) ({ entries, max } = (await ctx.packets.stats()).conntrack);
    const out = new PassThrough();
    let shown = 0;
    let matched = 0;
    let first = true;
    let aborted = false;
    // the response closed before it finished: the client went away, stop asking the packet side
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) aborted = true;
    });
    const write = (s: string): Promise<void> | void => {
      if (s === '' || out.write(s)) return;
      return new Promise<void>((resolve) => {
        const go = () => {
          out.off('drain', go);
          out.off('close', go);
          resolve();
        };
        out.once('drain', go);
        out.once('close', go);
      });
    };
    if (!text) out.write(`{"entries":${entries},"max":${max},"flows":[`);
    const done = ctx.packets.listFlows(req.query, limit, async (c) => {
      if (aborted) throw new Error('the client went away');
      const flows = unpackChunk(c);
      let chunk = '';
      for (const f of flows) {
        const e = f as unknown as ConntrackEntry;
        if (text) chunk += formatFlowL(f, c.now, { counters }) + '\n';
        else {
          chunk += (first ? '' : ',') + JSON.stringify(flowJson(e, c.now));
          first = false;
        }
      }
      shown = c.shown;
      matched = c.matched;
      await write(chunk);
    });
    done.then(
      () => {
        if (!text) out.write(`],"matched":${matched},"shown":${shown}}`);
        out.end();
      },
      (e: Error) => out.destroy(e),
    );
    reply.trailer('x-flow-count', async () => String(shown));
    reply.trailer('x-flow-matched', async () => String(matched));
    if (text) reply.type('text/plain; charset=utf-8');
    else reply.type('application/json; charset=utf-8');
    return reply.send(out);
  });

  app.delete<{ Querystring: ConntrackQuery }>('/v1/conntrack', { schema: { querystring: conntrackQuerySchema } }, async (req) => {
    const { filtered } = conntrackFilter(req.query);
    if (!filtered && !truthy(req.query.all)) {
      throw new ApiError(400, 'no_filter', 'DELETE /v1/conntrack without a filter would remove every flow: give a filter (protocol, src, dst, sport, dport, address, port, service, endpoint), or all=true to flush the table');
    }
    if (req.query.format !== undefined || req.query.limit !== undefined) throw new ApiError(400, 'invalid_request', 'format and limit apply to GET only');
    return ctx.packets.deleteFlows(req.query);
  });
}
