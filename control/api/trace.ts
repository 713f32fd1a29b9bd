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
 */
import type { FastifyInstance } from 'fastify';
import type { PacketTuple } from '../../dataplane/verdict.ts';
import { LinearCache, traceAnswer, traceSchema, TraceRequestError, verdictDifferences } from '../trace.ts';
import type { TraceRequest } from '../trace.ts';
import { ApiError } from './errors.ts';
import type { ApiContext } from './context.ts';
import { flowJson } from './conntrack.ts';

// the trace itself is control/trace.ts, shared with the offline `tunproxy trace --rules/--iptables`
export { LinearCache, traceSchema, verdictDifferences };
export type { TraceRequest };

export function registerTraceRoutes(app: FastifyInstance, ctx: ApiContext, cache: LinearCache): void {
  app.post<{ Body: TraceRequest }>('/v1/trace', { schema: { body: traceSchema } }, async (req) => {
    const rs = ctx.requireRuleSet();
    const dp = ctx.dp;
    const ct = dp.pipeline.conntrack;
    const now = ct.now();
    const live = {
      now,
      affinity: dp.pipeline.affinity,
      conntrack: (pkt: PacketTuple) => {
        const e = ct.lookup(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, now);
        return e === null ? null : { direction: ct.lastDirection === 0 ? 'original' : 'reply', flow: flowJson(e, now) };
      },
    };
    try {
      return traceAnswer({ rs, tables: dp.tables!, generation: ctx.generation, request: req.body, live, linear: () => cache.get(ctx, rs, req.body.inInterface ?? ''), nowMs: now });
    } catch (e) {
      if (e instanceof TraceRequestError) throw new ApiError(400, 'invalid_request', e.message, { errors: [{ path: e.path, message: e.reason }] });
      throw e;
    }
  });
}
