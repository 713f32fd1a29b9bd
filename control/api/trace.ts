/**
 *   POST /v1/trace  {"protocol": "TCP", "source": "192.168.77.2:40000", "destination": "10.96.0.10:80",
 *                    "inInterface": "eth0", "kubeProxy": true}
 *
 * What tunproxy would do with the first packet of that flow, and why: a
 * tracked flow it belongs to, the table that matched (ClusterIP, external IP,
 * load-balancer IP, NodePort), the service port, the policy chain's endpoint
 * candidates with their chances, a session-affinity hit, masquerade. Beside
 * it, what kube-proxy's iptables rules would do with the same rule set: the
 * rules written by control/iptables/writer.ts for the rule set in force,
 * walked linearly (control/iptables/linear.ts) — the verdict with the same
 * candidates and the number of rules visited on the way. The linear
 * evaluator is built on the first trace of a generation and kept for the
 * next ones.
 *
 * An IPv6 packet ([fd00:30::41]:80) is traced in the IPv6 tables and
 * kube-proxy's ip6tables rules, with the IPv6 connection and affinity tables.
 *
 * The connection table and the affinity table live on the packet thread:
 * what a live trace reads of them is asked of the packet side (one small
 * message) before the answer is built here.
 */
import type { FastifyInstance } from 'fastify';
import { lookup, LookupResult, LOOKUP_DNAT } from '../../dataplane/tables.ts';
import { lookup6 } from '../../dataplane/tables6.ts';
import type { TraceFlow } from '../worker/packet-side.ts';
import type { ConntrackEntry } from '../../dataplane/conntrack.ts';
import { LinearCache, traceAnswer, tracePacket, traceSchema, TraceRequestError, verdictDifferences } from '../trace.ts';
import type { TraceRequest } from '../trace.ts';
import { ApiError } from './errors.ts';
import type { ApiContext } from './context.ts';
import { flowJson } from './conntrack.ts';

// the trace itself is control/trace.ts, shared with the offline `tunproxy trace --rules/--iptables`
export { LinearCache, traceSchema, verdictDifferences };
export type { TraceRequest };

/** What the packet side answered, as the trace shows it (the flow as GET /v1/conntrack shows one). */
function liveOf(side: { now: number; flow: TraceFlow | null; affinityIndex: number }) {
  return {
    now: side.now,
    conntrack: side.flow === null ? null : { direction: side.flow.direction, flow: flowJson(side.flow.flow as unknown as ConntrackEntry, side.now) },
    affinityIndex: side.affinityIndex,
  };
}

export function registerTraceRoutes(app: FastifyInstance, ctx: ApiContext, cache: LinearCache): void {
  app.post<{ Body: TraceRequest }>('/v1/trace', { schema: { body: traceSchema } }, async (req) => {
    const rs = ctx.requireRuleSet();
    const t = ctx.holder.current!;
    try {
      const tp = tracePacket(rs, req.body);
      const linear = (family: 4 | 6) => cache.get(ctx, rs, req.body.inInterface ?? '', family);
      if (tp.family === 6) {
        // IPv6: the IPv6 tables, the IPv6 connection table and affinity, the ip6tables rules
        const p6 = tp.pkt;
        const t6 = t.v6 ?? null;
        let aff: { generation: number; svcIndex: number; setLocal: boolean } | null = null;
        if (t6 !== null) {
          const w = new Uint32Array(8);
          w.set(p6.src, 0);
          w.set(p6.dst, 4);
          const out = new LookupResult();
          const r = lookup6(t6, p6.proto, w, 0, 4, p6.dport, out);
          const svc = out.svcIndex < 0 ? null : t6.base.services[out.svcIndex];
          if (r === LOOKUP_DNAT && svc !== null && svc.affinityMs > 0) aff = { generation: t.generation, svcIndex: out.svcIndex, setLocal: out.setLocal };
        }
        const side = await ctx.packets.traceFlow6(p6, aff);
        return traceAnswer({ rs, tables: t, generation: ctx.generation, request: req.body, live: liveOf(side), linear, nowMs: side.now });
      }
      const pkt = tp.pkt;
      // which affinity entry to ask the packet side about, if any
      const out = new LookupResult();
      const r = lookup(t, pkt.proto, pkt.src, pkt.dst, pkt.dport, out);
      const svc = out.svcIndex < 0 ? null : t.services[out.svcIndex];
      const wantAffinity = r === LOOKUP_DNAT && svc !== null && svc.affinityMs > 0;
      const side = await ctx.packets.traceFlow(pkt, wantAffinity ? { generation: t.generation, svcIndex: out.svcIndex, setLocal: out.setLocal } : null);
      return traceAnswer({ rs, tables: t, generation: ctx.generation, request: req.body, live: liveOf(side), linear, nowMs: side.now });
    } catch (e) {
      if (e instanceof TraceRequestError) throw new ApiError(400, 'invalid_request', e.message, { errors: [{ path: e.path, message: e.reason }] });
      throw e;
    }
  });
}
