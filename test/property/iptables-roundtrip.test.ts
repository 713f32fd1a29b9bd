import t from 'tap';
import fc from 'fast-check';
import type { RuleSet } from '../../control/types.ts';
import { ruleSetModel } from '../../control/model.ts';
import { parseCidr, formatCidr } from '../../dataplane/addr.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { importIptables } from '../../control/iptables/importer.ts';
import { linearFromText } from '../../control/iptables/linear.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { arbRuleSet, arbRuleSetWithPackets } from '../support/arbitraries.ts';
import { arbDualStackRuleSet, packet6For } from '../support/arb-dualstack.ts';
import { endpointText } from '../../control/iptables/writer.ts';
import { importIptablesDualStack } from '../../control/iptables/import-dual.ts';
import { parseIptablesSave } from '../../control/iptables/parser.ts';
import { parseIPv6, parseCidr6, formatCidr6, formatIPv6 } from '../../dataplane/addr6.ts';

const RUNS = 250;

/** What kube-proxy's iptables rules say about a rule set; what they cannot say is left out. */
function observable(rs: RuleSet) {
  const m = ruleSetModel(rs);
  const ports = m.ports
    .filter((p) => p.clusterIP !== null)
    .map((p) => ({
      name: p.name,
      proto: p.proto,
      clusterIP: p.clusterIP,
      port: p.port.port,
      nodePort: p.port.nodePort ?? 0,
      // without endpoints, external and load-balancer IPs give the same filter rules
      externalIPs: p.hasEndpoints ? p.externalIPs : [],
      loadBalancerIPs: p.hasEndpoints ? p.loadBalancerIPs : [],
      externalOrLoadBalancerIPs: p.hasEndpoints ? [] : [...p.externalIPs, ...p.loadBalancerIPs],
      sourceRanges: p.usesFirewallChain ? p.loadBalancerSourceRanges.map((r) => formatCidr(parseCidr(r)!)) : [],
      allowFromNode: p.usesFirewallChain && p.allowFromNode,
      clusterEndpoints: p.usesClusterPolicyChain ? p.clusterEndpoints.map((e) => e.text) : [],
      localEndpoints: p.usesLocalPolicyChain ? p.localEndpoints.map((e) => e.text) : [],
      reachable: p.allReachableEndpoints.map((e) => e.text),
      affinitySeconds: p.usesClusterPolicyChain || p.usesLocalPolicyChain ? p.affinitySeconds : 0,
      hasEndpoints: p.hasEndpoints,
      hasInternalEndpoints: p.hasInternalEndpoints,
      hasExternalEndpoints: p.hasExternalEndpoints,
      internalPolicyLocal: p.hasEndpoints ? p.internalPolicyLocal : null,
      externalPolicyLocal: p.hasEndpoints ? p.externalPolicyLocal : null,
    }))
    .sort((a, b) => (a.name + a.proto < b.name + b.proto ? -1 : 1));
  const internal = m.ports.some((p) => p.clusterIP !== null && p.hasInternalEndpoints);
  const podRule = m.ports.some((p) => p.clusterIP !== null && p.usesExternalTrafficChain && p.externalPolicyLocal);
  return {
    ports,
    masqueradeMark: m.node.masqueradeMark,
    masqueradeAll: internal ? m.node.masqueradeAll : null,
    clusterCIDR: (internal && !m.node.masqueradeAll) || podRule ? m.node.clusterCIDR : null,
  };
}

t.test('the arbitraries give rule sets the validator accepts, and so does their import', async (t) => {
  fc.assert(
    fc.property(arbRuleSet(), (rs) => {
      const v = validateRuleSet(rs);
      if (!v.ok) throw new Error(`arbitrary rule set rejected: ${JSON.stringify(v.errors)}`);
      const imported = importIptables(writeIptables(rs), { nodeAddresses: rs.node.addresses }).ruleSet;
      const w = validateRuleSet(imported);
      if (!w.ok) throw new Error(`imported rule set rejected: ${JSON.stringify(w.errors)}`);
    }),
    { numRuns: RUNS, seed: 1701 },
  );
  t.pass(`${RUNS} rule sets valid`);
});

t.test('writer ∘ importer ∘ writer: the restore text is a fixed point, nothing is left unread', async (t) => {
  let checked = 0;
  fc.assert(
    fc.property(arbRuleSet(), (rs) => {
      const text = writeIptables(rs);
      const r = importIptables(text, { nodeAddresses: rs.node.addresses });
      if (r.notUnderstood.length > 0) throw new Error(`not understood: ${JSON.stringify(r.notUnderstood[0])}`);
      const again = writeIptables(r.ruleSet);
      if (again !== text) throw new Error(`differs:\n${text}\n---\n${again}`);
      checked++;
    }),
    { numRuns: RUNS, seed: 20240611 },
  );
  t.equal(checked, RUNS);
});

t.test('the imported rule set equals the original on what iptables can express', async (t) => {
  let withEndpoints = 0;
  fc.assert(
    fc.property(arbRuleSet(), (rs) => {
      const r = importIptables(writeIptables(rs), { nodeAddresses: rs.node.addresses });
      const want = observable(rs);
      const got = observable(r.ruleSet);
      if (JSON.stringify(want) !== JSON.stringify(got)) {
        throw new Error(`observable differs:\n${JSON.stringify(want, null, 1)}\n---\n${JSON.stringify(got, null, 1)}`);
      }
      if (want.ports.some((p) => p.clusterEndpoints.length > 1)) withEndpoints++;
    }),
    { numRuns: RUNS, seed: 977 },
  );
  t.ok(withEndpoints > RUNS / 4, `rule sets with a multi-endpoint service: ${withEndpoints}`);
});

t.test('linear evaluate: every DNAT verdict\'s probabilities sum to 1, over endpoints the service can reach', async (t) => {
  const kinds: Record<string, number> = {};
  fc.assert(
    fc.property(arbRuleSetWithPackets(12), ({ rs, packets }) => {
      const ev = linearFromText(writeIptables(rs), { localAddresses: rs.node.addresses });
      const model = ruleSetModel(rs);
      for (const pkt of packets) {
        const v = ev.evaluate(pkt);
        kinds[v.kind] = (kinds[v.kind] ?? 0) + 1;
        if (v.kind !== 'dnat') continue;
        const sum = v.candidates.reduce((s, c) => s + c.probability, 0);
        if (Math.abs(sum - 1) > 1e-9) throw new Error(`probabilities sum to ${sum}: ${JSON.stringify(v)}`);
        if (v.candidates.some((c) => !(c.probability > 0))) throw new Error(`a candidate without chance: ${JSON.stringify(v)}`);
        const port = model.ports.find((p) => p.name === v.service && p.protocol === (pkt.proto === 6 ? 'TCP' : pkt.proto === 17 ? 'UDP' : 'SCTP'));
        if (!port) throw new Error(`no service port ${v.service}`);
        const reachable = new Set(port.allReachableEndpoints.map((e) => e.text));
        for (const c of v.candidates) if (!reachable.has(c.endpoint)) throw new Error(`${c.endpoint} is not an endpoint of ${v.service}`);
        if (v.affinitySeconds !== port.affinitySeconds) throw new Error(`affinity ${v.affinitySeconds}, want ${port.affinitySeconds}`);
      }
    }),
    { numRuns: RUNS, seed: 4242 },
  );
  t.ok(kinds.dnat > 0 && kinds.nomatch > 0 && kinds.reject > 0 && kinds.drop > 0, `verdict kinds seen: ${JSON.stringify(kinds)}`);
});

/** mulberry32: a small seeded PRNG for reproducible draws */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

t.test('linear sample, drawn many times, follows evaluate\'s probabilities (chi-square)', async (t) => {
  const DRAWS = 1500;
  // chi-square critical values at p = 1e-5 for 1..3 degrees of freedom (4 endpoints at most)
  const CRITICAL = [0, 19.51, 23.03, 25.9];
  let tested = 0;
  fc.assert(
    fc.property(arbRuleSetWithPackets(6, { maxServices: 4 }), fc.integer({ min: 1, max: 2 ** 31 }), ({ rs, packets }, seed) => {
      const text = writeIptables(rs);
      const ev = linearFromText(text, { localAddresses: rs.node.addresses, random: mulberry32(seed) });
      for (const pkt of packets) {
        const v = ev.evaluate(pkt);
        if (v.kind !== 'dnat') {
          const s = ev.sample(pkt, 0);
          if (s.kind !== v.kind || (v.kind !== 'nomatch' && s.service !== v.service)) throw new Error(`sample ${s.kind} ${s.service}, evaluate ${JSON.stringify(v)}`);
          continue;
        }
        const counts = new Map<string, number>();
        for (let i = 0; i < DRAWS; i++) {
          ev.clearAffinity();
          const s = ev.sample(pkt, i * 1000);
          if (s.kind !== 'dnat' || s.service !== v.service) throw new Error(`sample ${s.kind} ${s.service}, evaluate dnat ${v.service}`);
          const c = v.candidates.find((x) => x.endpoint === s.endpoint);
          if (!c) throw new Error(`sampled ${s.endpoint}, not a candidate of ${JSON.stringify(v.candidates)}`);
          if (c.masquerade !== s.masquerade) throw new Error(`masquerade ${s.masquerade} for ${s.endpoint}, evaluate says ${c.masquerade}`);
          counts.set(s.endpoint, (counts.get(s.endpoint) ?? 0) + 1);
        }
        if (v.candidates.length < 2) continue;
        let chi2 = 0;
        for (const c of v.candidates) {
          const expected = c.probability * DRAWS;
          const observed = counts.get(c.endpoint) ?? 0;
          chi2 += (observed - expected) ** 2 / expected;
        }
        const df = v.candidates.length - 1;
        if (chi2 > CRITICAL[df]) throw new Error(`chi-square ${chi2.toFixed(2)} > ${CRITICAL[df]} (df ${df}): ${JSON.stringify([...counts])} vs ${JSON.stringify(v.candidates)}`);
        tested++;
      }
    }),
    { numRuns: 200, seed: 31337 },
  );
  t.ok(tested > 50, `multi-endpoint verdicts tested: ${tested}`);
});

// ---------------------------------------------------------------- dual stack (issue 13)

/** `observable`, family by family: each port view with its family, the node's settings each family's rules show. */
function observableDual(rs: RuleSet) {
  const m = ruleSetModel(rs);
  const canon = (c: string) => (c.includes(':') ? formatCidr6(parseCidr6(c)!) : formatCidr(parseCidr(c)!));
  const ports = m.ports
    .filter((p) => p.clusterIP !== null)
    .map((p) => ({
      family: p.family,
      name: p.name,
      proto: p.proto,
      clusterIP: p.clusterIP,
      port: p.port.port,
      nodePort: p.port.nodePort ?? 0,
      externalIPs: p.hasEndpoints ? p.externalIPs : [],
      loadBalancerIPs: p.hasEndpoints ? p.loadBalancerIPs : [],
      externalOrLoadBalancerIPs: p.hasEndpoints ? [] : [...p.externalIPs, ...p.loadBalancerIPs],
      sourceRanges: p.usesFirewallChain ? (p.family === 6 ? p.sourceRanges6.map(formatCidr6) : p.sourceRanges.map(formatCidr)) : [],
      allowFromNode: p.usesFirewallChain && p.allowFromNode,
      clusterEndpoints: p.usesClusterPolicyChain ? p.clusterEndpoints.map(endpointText) : [],
      localEndpoints: p.usesLocalPolicyChain ? p.localEndpoints.map(endpointText) : [],
      reachable: p.allReachableEndpoints.map(endpointText),
      affinitySeconds: p.usesClusterPolicyChain || p.usesLocalPolicyChain ? p.affinitySeconds : 0,
      hasEndpoints: p.hasEndpoints,
      hasInternalEndpoints: p.hasInternalEndpoints,
      hasExternalEndpoints: p.hasExternalEndpoints,
      internalPolicyLocal: p.hasEndpoints ? p.internalPolicyLocal : null,
      externalPolicyLocal: p.hasEndpoints ? p.externalPolicyLocal : null,
    }))
    .sort((a, b) => (`${a.family}${a.name}${a.proto}` < `${b.family}${b.name}${b.proto}` ? -1 : 1));
  const node = ([4, 6] as const).map((f) => {
    const own = ports.filter((p) => p.family === f);
    const internal = own.some((p) => p.hasInternalEndpoints);
    const podRule = own.some((p) => p.hasEndpoints && p.externalPolicyLocal && (p.nodePort !== 0 || p.externalIPs.length > 0 || p.loadBalancerIPs.length > 0));
    const cidr = f === 6 ? m.node.clusterCIDR6 : m.node.clusterCIDR;
    return { family: f, masqueradeAll: internal ? m.node.masqueradeAll : null, clusterCIDR: (internal && !m.node.masqueradeAll) || podRule ? (cidr === null ? null : canon(cidr)) : null };
  });
  return { ports, node, masqueradeMark: m.node.masqueradeMark };
}

t.test('dual stack: the arbitraries give valid rule sets of both families', async (t) => {
  let dual = 0;
  fc.assert(
    fc.property(arbDualStackRuleSet(), (rs) => {
      const v = validateRuleSet(rs);
      if (!v.ok) throw new Error(`arbitrary rule set rejected: ${JSON.stringify(v.errors)}\n${JSON.stringify(rs, null, 1)}`);
      if (v.model.portsOf(6).length > 0 && v.model.portsOf(4).length > 0) dual++;
    }),
    { numRuns: RUNS, seed: 6006 },
  );
  t.ok(dual > RUNS / 2, `rule sets with ports of both families: ${dual}`);
});

t.test('dual stack: model → iptables and ip6tables text → parse → import → model is the identity on what the rules express', async (t) => {
  let both = 0;
  fc.assert(
    fc.property(arbDualStackRuleSet(), (rs) => {
      const model = ruleSetModel(rs);
      const v4 = writeIptables(model);
      const v6 = writeIptables(model, { family: 6 });
      // the parser reads each as its family, with no error
      for (const [text, family] of [[v4, 4], [v6, 6]] as const) {
        const p = parseIptablesSave(text, { family });
        if (p.errors.length > 0) throw new Error(`family ${family} text does not parse: ${JSON.stringify(p.errors[0])}`);
      }
      const r = importIptablesDualStack(v4, v6, { nodeAddresses: rs.node.addresses });
      if (r.notUnderstood.length > 0) throw new Error(`not understood: ${JSON.stringify(r.notUnderstood[0])}`);
      if (r.errors.length > 0) throw new Error(`imported rule set rejected: ${JSON.stringify(r.errors)}\n${JSON.stringify(r.ruleSet, null, 1)}`);
      const want = observableDual(rs);
      const got = observableDual(r.ruleSet);
      if (JSON.stringify(want) !== JSON.stringify(got)) {
        throw new Error(`observable differs:\n${JSON.stringify(want, null, 1)}\n---\n${JSON.stringify(got, null, 1)}`);
      }
      // and the writer gives the same rules again, family by family (as sets of lines: a dump does not tell the order
      // of a service's ports whose rules lie in different tables, and the other family's dump may order them otherwise)
      const lines = (x: string) => x.split('\n').sort().join('\n');
      if (lines(writeIptables(r.ruleSet)) !== lines(v4)) throw new Error(`IPv4 rules differ:\n${v4}\n---\n${writeIptables(r.ruleSet)}`);
      if (lines(writeIptables(r.ruleSet, { family: 6 })) !== lines(v6)) throw new Error(`IPv6 rules differ:\n${v6}\n---\n${writeIptables(r.ruleSet, { family: 6 })}`);
      if (want.ports.some((p) => p.family === 6 && p.clusterEndpoints.length > 1) && want.ports.some((p) => p.family === 4)) both++;
    }),
    { numRuns: RUNS, seed: 1313 },
  );
  t.ok(both > RUNS / 4, `rule sets with multi-endpoint IPv6 ports beside IPv4 ones: ${both}`);
});

t.test('dual stack: the IPv6 linear walk of the writer\'s text answers with the endpoints of the rule set\'s IPv6 ports', async (t) => {
  const kinds: Record<string, number> = {};
  fc.assert(
    fc.property(arbDualStackRuleSet(), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.boolean()), { minLength: 8, maxLength: 8 }), (rs, picks) => {
      const model = ruleSetModel(rs);
      const six = model.portsOf(6).filter((p) => p.clusterIP !== null);
      if (six.length === 0) return;
      const ev = linearFromText(writeIptables(model, { family: 6 }), { localAddresses: rs.node.addresses, family: 6 });
      for (const [i, j, outside] of picks) {
        const p = six[i % six.length];
        const src = outside ? '2001:db8:7::7' : p.allReachableEndpoints.length > 0 ? p.allReachableEndpoints[j % p.allReachableEndpoints.length].address : '2001:db8:7::8';
        const v = ev.evaluate6({ proto: p.protocolNumber, src: parseIPv6(src)!, dst: parseIPv6(p.clusterIP!)!, sport: 40000, dport: p.port.port });
        kinds[v.kind] = (kinds[v.kind] ?? 0) + 1;
        if (v.kind === 'nomatch') throw new Error(`${p.name}: no match for its own ClusterIP`);
        if (v.kind !== 'dnat') continue;
        if (v.service !== p.name) throw new Error(`service ${v.service}, want ${p.name}`);
        const reachable = new Set(p.allReachableEndpoints.map(endpointText));
        for (const c of v.candidates) if (!reachable.has(c.endpoint)) throw new Error(`${c.endpoint} is not an IPv6 endpoint of ${p.name}`);
        const sum = v.candidates.reduce((s, c) => s + c.probability, 0);
        if (Math.abs(sum - 1) > 1e-9) throw new Error(`probabilities sum to ${sum}`);
      }
    }),
    { numRuns: RUNS, seed: 66 },
  );
  t.ok(kinds.dnat > 0 && kinds.reject > 0, `verdict kinds seen: ${JSON.stringify(kinds)}`);
});

t.test('dual stack: random IPv6 packets, evaluate6 and sample6 agree; DNAT probabilities sum to 1', async (t) => {
  const kinds: Record<string, number> = {};
  fc.assert(
    fc.property(
      arbDualStackRuleSet().chain((rs) => fc.record({ rs: fc.constant(rs), packets: fc.array(packet6For(rs), { minLength: 10, maxLength: 10 }) })),
      ({ rs, packets }) => {
        const model = ruleSetModel(rs);
        const ev = linearFromText(writeIptables(model, { family: 6 }), { localAddresses: rs.node.addresses, family: 6 });
        for (const pkt of packets) {
          const v = ev.evaluate6(pkt);
          kinds[v.kind] = (kinds[v.kind] ?? 0) + 1;
          ev.clearAffinity();
          const s = ev.sample6(pkt, 0);
          if (s.kind !== v.kind) throw new Error(`sample6 ${s.kind}, evaluate6 ${JSON.stringify(v)}`);
          if (v.kind !== 'dnat') continue;
          const sum = v.candidates.reduce((x, c) => x + c.probability, 0);
          if (Math.abs(sum - 1) > 1e-9) throw new Error(`probabilities sum to ${sum}`);
          const c = v.candidates.find((x) => x.endpoint === s.endpoint);
          if (!c) throw new Error(`sampled ${s.endpoint}, not among ${JSON.stringify(v.candidates)}`);
          if (`[${formatIPv6(s.endpointAddr6)}]:${s.endpointPort}` !== s.endpoint) throw new Error(`endpointAddr6/endpointPort ${formatIPv6(s.endpointAddr6)} ${s.endpointPort} vs ${s.endpoint}`);
        }
      },
    ),
    { numRuns: RUNS, seed: 6116 },
  );
  t.ok(kinds.dnat > 0 && kinds.nomatch > 0 && kinds.reject > 0, `verdict kinds seen: ${JSON.stringify(kinds)}`);
});
