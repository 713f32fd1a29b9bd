/**
 *   GET    /v1/conntrack[?filters][&format=text|json]   the tracked flows (text: `conntrack -L` lines)
 *   DELETE /v1/conntrack?filters                         remove the matching flows (all=true for every flow)
 *
 * Filters (all must hold), in conntrack(8)'s terms:
 *   protocol   tcp, udp, sctp, icmp (IPv4), icmpv6 (IPv6) (or the number)
 *   family     ipv4 or ipv6 (conntrack -f); default both
 *   src, dst   the original direction's source / destination address (conntrack -s / -d)
 *   sport, dport  the original direction's ports (--sport / --dport)
 *   address    any address of the flow, either direction;  port: any port of the flow
 *   service    kube-proxy's service-port name, or "ns/name" for all its ports
 *   endpoint   the endpoint (reply source): "10.64.1.7", "10.64.1.7:8080",
 *              "fd00:10:64:1::7", "[fd00:10:64:1::7]:8080"
 * An address is IPv4 or IPv6 text; it matches flows of its own family only
 * (IPv6: on all 128 bits), so an address filter selects one family.
 */
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { unpackChunk, formatFlowL } from '../worker/flows.ts';
import type { FlowRecord } from '../worker/flows.ts';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';
import { stateName } from '../../dataplane/conntrack.ts';
import { formatIPv4, parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { looksIPv6, parseIPv6 } from '../../dataplane/addr6.ts';
import type { Conntrack6 } from '../../dataplane/conntrack6.ts';
import { CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST, PROTO_ICMPV6 } from '../../dataplane/conntrack6.ts';
import { ApiError } from './errors.ts';
import type { ApiContext } from './context.ts';

export interface ConntrackQuery {
  protocol?: string;
  family?: string;
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

// an address of either family; its meaning is checked by conntrackFilter (400 naming the field)
const address = { type: 'string', minLength: 1, maxLength: 64, description: 'an IPv4 (10.64.1.7) or IPv6 (fd00:10:64:1::7) address' } as const;
const port = { type: 'string', pattern: '^[0-9]{1,5}$' } as const;
export const conntrackQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    protocol: { type: 'string', pattern: '^(tcp|udp|sctp|icmp|icmpv6|ipv6-icmp|TCP|UDP|SCTP|ICMP|ICMPV6|ICMPv6|IPV6-ICMP|6|17|132|1|58)$' },
    family: { enum: ['ipv4', 'ipv6', 'IPv4', 'IPv6', '4', '6'], description: "the flows of one family (conntrack -f); default both" },
    src: address,
    dst: address,
    sport: port,
    dport: port,
    address,
    port,
    service: { type: 'string', minLength: 1, maxLength: 300 },
    endpoint: { type: 'string', minLength: 1, maxLength: 72, description: 'the endpoint (reply source): 10.64.1.7, 10.64.1.7:8080, fd00:10:64:1::7, [fd00:10:64:1::7]:8080' },
    format: { enum: ['json', 'text'] },
    limit: { type: 'string', pattern: '^[0-9]{1,9}$' },
    counters: { enum: ['true', 'false', '1', '0', ''] },
    all: { enum: ['true', 'false', '1', '0', ''] },
  },
} as const;

// icmp is IPv4's (1), icmpv6 IPv6's (58), as conntrack -p names them; Conntrack6 keeps an ICMPv6 flow under 1
const PROTOS: Record<string, number> = { tcp: PROTO_TCP, udp: PROTO_UDP, sctp: PROTO_SCTP, icmp: PROTO_ICMP, icmpv6: PROTO_ICMPV6, 'ipv6-icmp': PROTO_ICMPV6, '6': PROTO_TCP, '17': PROTO_UDP, '132': PROTO_SCTP, '1': PROTO_ICMP, '58': PROTO_ICMPV6 };

function badQuery(field: string, message: string): ApiError {
  return new ApiError(400, 'invalid_request', `${field}: ${message}`, { errors: [{ path: `query.${field}`, message }] });
}

function portOf(v: string | undefined, name: string): number {
  if (v === undefined) return -1;
  const n = Number(v);
  if (!/^[0-9]{1,5}$/.test(v) || n > 65535) throw badQuery(name, `${v} is not a port (0-65535)`);
  return n;
}

/** An address filter: its family, and the address (IPv4: a number; IPv6: four words). */
interface AddrFilter {
  family: 4 | 6;
  v4: number;
  v6: Uint32Array;
}

function addressOf(v: string | undefined, field: string): AddrFilter | null {
  if (v === undefined) return null;
  if (looksIPv6(v)) {
    const w = parseIPv6(v);
    if (w === null) throw badQuery(field, `${JSON.stringify(v)} is not an IPv6 address`);
    return { family: 6, v4: -1, v6: w };
  }
  const a = parseIPv4(v);
  if (a < 0) throw badQuery(field, `${JSON.stringify(v)} is not an IPv4 or IPv6 address`);
  return { family: 4, v4: a, v6: new Uint32Array(4) };
}

/**
 * The endpoint filter, in the forms kube-proxy and conntrack-tools print an
 * endpoint (Go's net.JoinHostPort): 10.64.1.7, 10.64.1.7:8080,
 * fd00:10:64:1::7 (no port: an IPv6 address's colons are its own),
 * [fd00:10:64:1::7], [fd00:10:64:1::7]:8080.
 */
function endpointOf(v: string | undefined): { addr: AddrFilter; port: number } | null {
  if (v === undefined) return null;
  const forms = 'an address or address:port (10.64.1.7, 10.64.1.7:8080, fd00::7, [fd00::7]:8080)';
  let host: string;
  let p: string | undefined;
  if (v.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(v);
    if (m === null) throw badQuery('endpoint', `${JSON.stringify(v)} is not ${forms}`);
    host = m[1];
    p = m[2];
    if (!looksIPv6(host)) throw badQuery('endpoint', `${JSON.stringify(v)}: brackets hold an IPv6 address, not ${JSON.stringify(host)}`);
  } else if (looksIPv6(v) && v.indexOf(':') !== v.lastIndexOf(':')) {
    host = v; // an IPv6 address without a port
  } else {
    const i = v.indexOf(':');
    host = i < 0 ? v : v.slice(0, i);
    p = i < 0 ? undefined : v.slice(i + 1);
  }
  let addr: AddrFilter;
  try {
    addr = addressOf(host, 'endpoint')!;
  } catch {
    throw badQuery('endpoint', `${JSON.stringify(v)} is not ${forms}`);
  }
  return { addr, port: p === undefined ? -1 : portOf(p, 'endpoint') };
}

/** w[o..o+4) is the address `a` (four words) */
function is6(w: Uint32Array, o: number, a: Uint32Array): boolean {
  return w[o] === a[0] && w[o + 1] === a[1] && w[o + 2] === a[2] && w[o + 3] === a[3];
}

/**
 * A predicate over flows from the query: `pred` over IPv4 flows, `pred6`
 * over the IPv6 flows of `ct6` (their addresses are read from its side
 * array, all 128 bits); `filtered` is false when no filter was given. An
 * address filter of one family matches only flows of that family. Throws
 * an ApiError (400, naming the field) for a filter that is not well formed.
 */
export function conntrackFilter(q: ConntrackQuery, ct6: Conntrack6 | null = null): { pred: (e: ConntrackEntry) => boolean; pred6: (e: ConntrackEntry) => boolean; filtered: boolean } {
  const protoAsked = q.protocol === undefined ? -1 : PROTOS[q.protocol.toLowerCase()];
  const famText = q.family?.toLowerCase();
  let family = 0;
  if (famText !== undefined) {
    family = famText === 'ipv4' || famText === '4' ? 4 : famText === 'ipv6' || famText === '6' ? 6 : -1;
    if (family < 0) throw badQuery('family', `${JSON.stringify(q.family)} is not ipv4 or ipv6`);
  }
  const src = addressOf(q.src, 'src');
  const dst = addressOf(q.dst, 'dst');
  const any = addressOf(q.address, 'address');
  const sport = portOf(q.sport, 'sport');
  const dport = portOf(q.dport, 'dport');
  const anyPort = portOf(q.port, 'port');
  const ep = endpointOf(q.endpoint);
  const epPort = ep === null ? -1 : ep.port;
  const svc = q.service;
  const svcPrefix = svc === undefined ? '' : svc + ':';
  const addrs = [src, dst, any, ep?.addr ?? null];
  const filtered = protoAsked >= 0 || family > 0 || addrs.some((a) => a !== null) || sport >= 0 || dport >= 0 || anyPort >= 0 || svc !== undefined;
  // the families a flow may be of to match: each address filter, the protocol (icmp / icmpv6) and family= narrow it
  let fam4 = family !== 6 && protoAsked !== PROTO_ICMPV6;
  let fam6 = family !== 4 && protoAsked !== PROTO_ICMP;
  for (const a of addrs) {
    if (a === null) continue;
    if (a.family === 4) fam6 = false;
    else fam4 = false;
  }
  const none = (): boolean => false;
  // the checks on what both families' entries hold as numbers (protocol as stored, ports, service)
  const proto = protoAsked === PROTO_ICMPV6 ? PROTO_ICMP : protoAsked;
  const common = (e: ConntrackEntry): boolean => {
    if (proto >= 0 && e.proto !== proto) return false;
    if (sport >= 0 && e.origSport !== sport) return false;
    if (dport >= 0 && e.origDport !== dport) return false;
    if (anyPort >= 0 && e.origSport !== anyPort && e.origDport !== anyPort && e.replySport !== anyPort && e.replyDport !== anyPort) return false;
    if (epPort >= 0 && e.endpointPort !== epPort) return false;
    if (svc !== undefined && e.serviceName !== svc && !e.serviceName.startsWith(svcPrefix)) return false;
    return true;
  };
  const s4 = src?.v4 ?? -1;
  const d4 = dst?.v4 ?? -1;
  const a4 = any?.v4 ?? -1;
  const ep4 = ep?.addr.v4 ?? -1;
  const pred = !fam4
    ? none
    : (e: ConntrackEntry): boolean => {
        if (!common(e)) return false;
        if (s4 >= 0 && e.origSrc !== s4) return false;
        if (d4 >= 0 && e.origDst !== d4) return false;
        if (a4 >= 0 && e.origSrc !== a4 && e.origDst !== a4 && e.replySrc !== a4 && e.replyDst !== a4) return false;
        if (ep4 >= 0 && e.endpointAddr !== ep4) return false;
        return true;
      };
  const hasAddr6 = addrs.some((a) => a !== null);
  // an IPv6 flow's addresses are in its table's side array (16 words at wordsAt(e): CT6_ORIG_SRC, …)
  const pred6 = !fam6 || (hasAddr6 && ct6 === null)
    ? none
    : (e: ConntrackEntry): boolean => {
        if (!common(e)) return false;
        if (!hasAddr6) return true;
        const w = ct6!.wordArray;
        const b = ct6!.wordsAt(e);
        if (src !== null && !is6(w, b + CT6_ORIG_SRC, src.v6)) return false;
        if (dst !== null && !is6(w, b + CT6_ORIG_DST, dst.v6)) return false;
        if (any !== null && !is6(w, b + CT6_ORIG_SRC, any.v6) && !is6(w, b + CT6_ORIG_DST, any.v6) && !is6(w, b + CT6_REPLY_SRC, any.v6) && !is6(w, b + CT6_REPLY_DST, any.v6)) return false;
        if (ep !== null && !is6(w, b + CT6_REPLY_SRC, ep.addr.v6)) return false;
        return true;
      };
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
      throw new ApiError(400, 'no_filter', 'DELETE /v1/conntrack without a filter would remove every flow: give a filter (protocol, family, src, dst, sport, dport, address, port, service, endpoint), or all=true to flush the table');
    }
    if (req.query.format !== undefined || req.query.limit !== undefined) throw new ApiError(400, 'invalid_request', 'format and limit apply to GET only');
    return ctx.packets.deleteFlows(req.query);
  });
}
