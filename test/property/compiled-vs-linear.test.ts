/**
 * The two deciders are each other's oracle: for random rule sets and random
 * packets, the compiled hash tables and kube-proxy's rules (written, parsed
 * and walked linearly as netfilter does) give the same verdict: same kind,
 * same service, same candidate endpoints with the same probabilities (to
 * iptables' 2^-31 rounding of --probability), same masquerade decision per
 * endpoint, same reject or drop. 10 000 (rule set, packet) cases; and the
 * same in IPv6: dual-stack rule sets, the IPv6 tables (dataplane/tables6.ts)
 * against kube-proxy's ip6tables rules walked linearly (evaluate6).
 */
import t from 'tap';
import fc from 'fast-check';
import { arbRuleSetWithPackets } from '../support/arbitraries.ts';
import { compile } from '../../control/compile.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { linearFromText } from '../../control/iptables/linear.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import type { Verdict } from '../../dataplane/verdict.ts';
import { formatIPv4 } from '../../dataplane/addr.ts';
import { Rng, selectEndpoint } from '../../dataplane/select.ts';
import { LookupResult, lookup, LOOKUP_DNAT } from '../../dataplane/tables.ts';
import { compiledVerdict6 } from '../../dataplane/tables6.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import { arbDualStackRuleSet, packet6For } from '../support/arb-dualstack.ts';

function agree(a: Verdict, b: Verdict): string | null {
  if (a.kind !== b.kind) return `kind ${a.kind} vs ${b.kind}`;
  if (a.kind === 'nomatch') return null;
  if (a.kind === 'reject' && b.kind === 'reject') return a.service === b.service ? null : `service ${a.service} vs ${b.service}`;
  if (a.kind === 'drop' && b.kind === 'drop') return a.service === b.service && a.reason === b.reason ? null : `drop ${a.service}/${a.reason} vs ${b.service}/${b.reason}`;
  if (a.kind === 'dnat' && b.kind === 'dnat') {
    if (a.service !== b.service) return `service ${a.service} vs ${b.service}`;
    if (a.affinitySeconds !== b.affinitySeconds) return `affinity ${a.affinitySeconds} vs ${b.affinitySeconds}`;
    if (a.candidates.length !== b.candidates.length) return `candidates ${JSON.stringify(a.candidates)} vs ${JSON.stringify(b.candidates)}`;
    for (let i = 0; i < a.candidates.length; i++) {
      const x = a.candidates[i];
      const y = b.candidates[i];
      if (x.endpoint !== y.endpoint || x.masquerade !== y.masquerade || Math.abs(x.probability - y.probability) > 1e-8) {
        return `candidate ${i}: ${JSON.stringify(x)} vs ${JSON.stringify(y)}`;
      }
    }
    return null;
  }
  return 'unreachable';
}

const RULE_SETS = 500;
const PACKETS_PER_SET = 20;

t.test(`compiled and linear agree on ${RULE_SETS * PACKETS_PER_SET} (rule set, packet) cases`, async (t) => {
  let cases = 0;
  const kinds: Record<string, number> = {};
  fc.assert(
    fc.property(arbRuleSetWithPackets(PACKETS_PER_SET), ({ rs, packets }) => {
      const v = validateRuleSet(rs);
      if (!v.ok) throw new Error(`the arbitrary made an invalid rule set: ${JSON.stringify(v.errors)}`);
      const tables = compile(rs);
      const linear = linearFromText(writeIptables(rs), { localAddresses: rs.node.addresses });
      for (const p of packets) {
        const c = compiledVerdict(tables, p);
        const l = linear.evaluate(p);
        const why = agree(c, l);
        if (why !== null) {
          throw new Error(`${formatIPv4(p.src)}:${p.sport} > ${formatIPv4(p.dst)}:${p.dport} proto ${p.proto}: ${why}\ncompiled ${JSON.stringify(c)}\nlinear   ${JSON.stringify(l)}`);
        }
        kinds[c.kind] = (kinds[c.kind] ?? 0) + 1;
        cases++;
      }
    }),
    { numRuns: RULE_SETS, seed: 424242 },
  );
  t.equal(cases, RULE_SETS * PACKETS_PER_SET);
  t.comment(`verdicts: ${JSON.stringify(kinds)}`);
  for (const k of ['dnat', 'reject', 'nomatch', 'drop']) t.ok((kinds[k] ?? 0) > 50, `the generator reached ${k} verdicts (${kinds[k] ?? 0})`);
});

const RULE_SETS_6 = 300;

t.test(`IPv6: compiled and linear agree on ${RULE_SETS_6 * PACKETS_PER_SET} (dual-stack rule set, IPv6 packet) cases`, async (t) => {
  let cases = 0;
  const kinds: Record<string, number> = {};
  const arb = arbDualStackRuleSet().chain((rs) => fc.record({ rs: fc.constant(rs), packets: fc.array(packet6For(rs), { minLength: PACKETS_PER_SET, maxLength: PACKETS_PER_SET }) }));
  fc.assert(
    fc.property(arb, ({ rs, packets }) => {
      const v = validateRuleSet(rs);
      if (!v.ok) throw new Error(`the arbitrary made an invalid rule set: ${JSON.stringify(v.errors)}`);
      const t6 = compile(v.model).v6;
      const linear = linearFromText(writeIptables(v.model, { family: 6 }), { localAddresses: rs.node.addresses, family: 6 });
      for (const p of packets) {
        const c = t6 ? compiledVerdict6(t6, p) : { kind: 'nomatch' as const };
        const l = linear.evaluate6(p);
        const why = agree(c, l);
        if (why !== null) {
          throw new Error(`[${formatIPv6(p.src)}]:${p.sport} > [${formatIPv6(p.dst)}]:${p.dport} proto ${p.proto}: ${why}\ncompiled ${JSON.stringify(c)}\nlinear   ${JSON.stringify(l)}`);
        }
        kinds[c.kind] = (kinds[c.kind] ?? 0) + 1;
        cases++;
      }
    }),
    { numRuns: RULE_SETS_6, seed: 626262 },
  );
  t.equal(cases, RULE_SETS_6 * PACKETS_PER_SET);
  t.comment(`IPv6 verdicts: ${JSON.stringify(kinds)}`);
  for (const k of ['dnat', 'reject', 'nomatch', 'drop']) t.ok((kinds[k] ?? 0) > 30, `the generator reached ${k} verdicts (${kinds[k] ?? 0})`);
});

t.test('both choose endpoints uniformly (chi-square over sampled choices)', async (t) => {
  const rs = {
    apiVersion: 'tunproxy.dev/v1',
    node: { addresses: ['172.16.1.35'], clusterCIDR: '10.64.0.0/16' },
    services: [{ namespace: 'default', name: 'web', clusterIP: '10.96.0.1', ports: [{ name: 'http', protocol: 'TCP' as const, port: 80, targetPort: 8080 }],
      endpoints: [1, 2, 3, 4, 5].map((i) => ({ address: `10.64.1.${i}` })) }],
  };
  const tables = compile(rs);
  let seed = 17;
  const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const linear = linearFromText(writeIptables(rs), { localAddresses: rs.node.addresses, random });
  const rng = new Rng(99);
  const out = new LookupResult();
  const N = 50_000;
  const lc = new Map<string, number>();
  const cc = new Map<string, number>();
  for (let i = 0; i < N; i++) {
    const p = { proto: 6, src: 0xc0000201 + (i % 50), dst: 0x0a600001, sport: 1024 + (i % 60000), dport: 80 };
    const s = linear.sample(p, i);
    lc.set(s.endpoint, (lc.get(s.endpoint) ?? 0) + 1);
    if (lookup(tables, p.proto, p.src, p.dst, p.dport, out) !== LOOKUP_DNAT) throw new Error('no dnat');
    const k = selectEndpoint(tables, out, p.proto, p.src, p.dst, p.sport, p.dport, i, rng, null);
    const e = `${formatIPv4(tables.endpointFlat[2 * k] >>> 0)}:${tables.endpointFlat[2 * k + 1]}`;
    cc.set(e, (cc.get(e) ?? 0) + 1);
  }
  const chi = (m: Map<string, number>) => [...m.values()].reduce((s, c) => s + (c - N / 5) ** 2 / (N / 5), 0);
  // 99.9th percentile of chi-square with 4 degrees of freedom
  t.equal(lc.size, 5);
  t.equal(cc.size, 5);
  t.ok(chi(lc) < 18.47, `linear counts ${JSON.stringify([...lc])} chi2 ${chi(lc).toFixed(2)}`);
  t.ok(chi(cc) < 18.47, `compiled counts ${JSON.stringify([...cc])} chi2 ${chi(cc).toFixed(2)}`);
});
