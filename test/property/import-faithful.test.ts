/**
 * The import is faithful, and never broader than the kernel: for every packet,
 * what the imported rule set decides (DNAT with its candidates, masquerade,
 * REJECT, DROP) is what the ORIGINAL dump decides when walked as netfilter
 * walks it (control/iptables/linear.ts), or the imported rule set leaves the
 * packet alone (a service port it left out, with a report). Two sources of
 * dumps: the fixtures of each kube-proxy generation, and rule sets written as
 * kube-proxy writes them with conditions tunproxy cannot model (physdev,
 * addrtype, source, mark, interface, unknown matches) added to random rules.
 */
import t from 'tap';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import type { PacketTuple, Verdict } from '../../dataplane/verdict.ts';
import { compiledVerdict } from '../../dataplane/tables.ts';
import { formatIPv4, parseIPv4, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { compile } from '../../control/compile.ts';
import { importIptables } from '../../control/iptables/importer.ts';
import type { ImportResult } from '../../control/iptables/importer.ts';
import { linearFromText } from '../../control/iptables/linear.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { verdictDifferences } from '../../control/trace.ts';
import { arbRuleSet } from '../support/arbitraries.ts';

const RUNS = Number(process.env.TUNPROXY_PROPERTY_RUNS ?? 150);
const fixture = (name: string) => readFileSync(new URL(`../fixtures/iptables/${name}`, import.meta.url), 'utf8');

/** Every address and port the dump's rules name, and a few others. */
function universe(text: string, extra: string[]) {
  const addrs = new Set<string>(extra);
  for (const m of text.matchAll(/(?:-d|-s|--to-destination) (\d+\.\d+\.\d+\.\d+)/g)) addrs.add(m[1]);
  const ports = new Set<number>([1, 8080]);
  for (const m of text.matchAll(/--dport (\d+)/g)) ports.add(Number(m[1]));
  return { addrs: [...addrs].map(parseIPv4), ports: [...ports] };
}

function arbPacket(u: { addrs: number[]; ports: number[] }): fc.Arbitrary<PacketTuple> {
  const addr = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...u.addrs) }, { weight: 1, arbitrary: fc.integer({ min: 0x01000000, max: 0xdfffffff }) });
  return fc.record({
    proto: fc.constantFrom(PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_SCTP),
    src: addr,
    dst: addr,
    sport: fc.integer({ min: 1024, max: 65535 }),
    dport: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...u.ports) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 65535 }) }),
  });
}

/**
 * The imported decision is the kernel's, or no decision at all. Other software's masquerade rules
 * (flannel's, docker's) still run in the kernel on the packets tunproxy sends on: a difference in
 * masquerade alone must vanish when the rules the import lists as "left to the kernel" are taken out.
 */
function check(text: string, r: ImportResult, nodeAddresses: string[], packets: PacketTuple[], allowed: (p: PacketTuple, a: Verdict, d: string[]) => boolean = () => false, strict = false): void {
  if (r.errors.length > 0) throw new Error(`the import is not a valid rule set: ${JSON.stringify(r.errors)}`);
  const tables = compile(r.ruleSet);
  const kernel = linearFromText(text, { localAddresses: nodeAddresses });
  const otherLines = new Set(r.otherSoftware.map((o) => o.line));
  const lines = text.split('\n');
  const kernelWithoutOthers = otherLines.size === 0 ? kernel : linearFromText(lines.map((l, i) => (otherLines.has(i + 1) ? '' : l)).join('\n'), { localAddresses: nodeAddresses });
  for (const p of packets) {
    const a = compiledVerdict(tables, p);
    if (a.kind === 'nomatch' && !strict) continue; // left to the kernel: never broader
    const b = kernel.evaluate(p);
    let d = verdictDifferences(a, b);
    if (d.length > 0 && d.every((x) => /masquerade false in tunproxy, true in kube-proxy/.test(x))) d = verdictDifferences(a, kernelWithoutOthers.evaluate(p));
    if (d.length > 0 && !allowed(p, a, d)) {
      throw new Error(`${p.proto} ${formatIPv4(p.src)}:${p.sport} -> ${formatIPv4(p.dst)}:${p.dport}: imported ${JSON.stringify(a)}, the dump ${JSON.stringify(b)}: ${d.join('; ')}`);
    }
  }
}

const FIXTURES: Array<[string, string[]]> = [
  ['kube-proxy-v1.10.save', ['192.168.0.2']],
  ['kube-proxy-v1.23.save', ['192.168.0.2']],
  ['kube-proxy-v1.29.save', ['192.168.0.2']],
  ['pre-1.24-layout.save', ['192.168.0.2']],
  ['conflicts.save', ['192.168.0.2']],
  ['with-other-software.save', ['172.16.1.35']],
  ['golden-restore.txt', ['172.16.1.35']],
];

for (const [name, node] of FIXTURES) {
  t.test(`${name}: every imported decision is the original dump's`, async (t) => {
    const text = fixture(name);
    const r = importIptables(text, { nodeAddresses: node });
    t.same(r.errors, [], 'a valid rule set');
    const u = universe(text, [...node, '10.0.0.2', '10.244.3.3', '203.0.113.9', '198.51.100.7']);
    // v1.22-v1.23 does not masquerade pods reaching an external IP; tunproxy does (reported as a limit)
    // the differences the import reports as limits, and only those:
    const reported = (p: PacketTuple, a: Verdict, d: string[]) =>
      // v1.22-v1.23 does not masquerade pods reaching an external IP; tunproxy does
      (r.limits.some((l) => l.reason.includes(`does not masquerade pods of 10.0.0.0/8 reaching ${formatIPv4(p.dst)}:${p.dport}`)) && (p.src >>> 24) === 10 && d.every((x) => /masquerade true in tunproxy, false in kube-proxy/.test(x))) ||
      // before v1.24 KUBE-MARK-DROP only marks forwarded packets; tunproxy drops them
      (a.kind === 'drop' && d.every((x) => x === 'tunproxy: drop, kube-proxy: nomatch') && r.limits.some((l) => l.reason.startsWith(`${a.service}: the kernel only marks this traffic for dropping (KUBE-MARK-DROP)`)));
    // where the import reports nothing narrower than the kernel (only shadowed services, localhost NodePorts and the
    // differences allowed above), it must decide every packet as the dump does, no match included
    const narrowing = r.limits.filter((l) => !/^(shadowed:|not served: NodePorts on 127\.0\.0\.1)/.test(l.reason) && !/does not masquerade pods of|only marks this traffic for dropping/.test(l.reason));
    const strict = narrowing.length === 0;
    fc.assert(fc.property(fc.array(arbPacket(u), { minLength: 40, maxLength: 40 }), (packets) => check(text, r, node, packets, reported, strict)), { numRuns: RUNS });
    t.pass(`${RUNS} × 40 packets agree${strict ? ', no match included' : ` where the import decides (${narrowing.length} narrowing limits reported)`}`);
  });
}

/** Conditions tunproxy cannot model, as they appear in real dumps. */
const CONDITIONS = [
  '-m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL',
  '-m addrtype ! --src-type LOCAL',
  '-m addrtype --dst-type LOCAL',
  '-s 198.51.100.0/24',
  '! -s 203.0.113.0/25',
  '-m mark --mark 0x1/0x1',
  '-i eth0',
  '-m set --match-set allowed src',
];

/** kube-proxy's rules for `rs`, with conditions added to some of its rules (those chosen by `picks`). */
function withConditions(text: string, picks: Array<[number, number]>): { text: string; touched: number; changed: string[] } {
  const lines = text.split('\n');
  const candidates = lines.map((l, i) => [l, i] as const).filter(([l]) => /^-A KUBE-(SERVICES|NODEPORTS|SVC-|SVL-|EXT-|FW-)/.test(l) && / -j /.test(l));
  let touched = 0;
  const changed: string[] = [];
  for (const [which, cond] of picks) {
    if (candidates.length === 0) break;
    const [, i] = candidates[which % candidates.length];
    if (lines[i].includes('-m physdev') || lines[i].includes('--match-set') || / -i /.test(lines[i])) continue;
    const c = CONDITIONS[cond % CONDITIONS.length];
    // a source match on a rule that has one, or on a masquerade rule (indistinguishable from kube-proxy's "! -s <cluster CIDR>")
    if (c.includes('-s ') && (/ -s /.test(lines[i]) || lines[i].endsWith('-j KUBE-MARK-MASQ'))) continue;
    lines[i] = lines[i].replace(/ -j /, ` ${c} -j `);
    touched++;
    changed.push(lines[i]);
  }
  return { text: lines.join('\n'), touched, changed };
}

t.test('kube-proxy rules with conditions tunproxy cannot model: the import serves less, never more, and says so', async (t) => {
  let narrowed = 0;
  fc.assert(
    fc.property(
      arbRuleSet().chain((rs) =>
        fc.record({
          rs: fc.constant(rs),
          picks: fc.array(fc.tuple(fc.nat(), fc.nat()), { minLength: 1, maxLength: 4 }),
          packets: fc.array(arbPacket(universe(writeIptables(rs), [...rs.node.addresses, '10.0.0.2', '198.51.100.7', '203.0.113.9'])), { minLength: 40, maxLength: 40 }),
        }),
      ),
      ({ rs, picks, packets }) => {
        const { text, touched, changed } = withConditions(writeIptables(rs), picks);
        const r = importIptables(text, { nodeAddresses: rs.node.addresses });
        try {
          check(text, r, rs.node.addresses, packets);
        } catch (e) {
          throw new Error(`${(e as Error).message}\nrules given conditions:\n${changed.join('\n')}`);
        }
        if (touched > 0 && r.limits.length + r.notUnderstood.length === 0 && !changed.every((l) => /--dst-type LOCAL -m addrtype --dst-type LOCAL|-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS/.test(l))) throw new Error(`conditions were added, but the import reports nothing:\n${changed.join('\n')}`);
        if (touched > 0) narrowed++;
      },
    ),
    { numRuns: RUNS },
  );
  t.ok(narrowed > 0, `${narrowed} dumps with conditions imported narrower, each with a report`);
});
