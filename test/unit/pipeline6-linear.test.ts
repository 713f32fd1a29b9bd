/**
 * `tunproxy run --decider linear` for IPv6: new IPv6 flows decided by the
 * walk of kube-proxy's ip6tables rules (dataplane/pipeline6-linear.ts, the
 * pipeline's `linear6`), the walk built as the run path builds it (the
 * rule set's model → writeIptables family 6 → parser → linear evaluator).
 * Through Pipeline.process with literal IPv6 packets, the linear pipeline
 * and the compiled one give the same verdicts and the same bytes out.
 */
import t from 'tap';
import { validateRuleSet } from '../../control/validate.ts';
import { compile } from '../../control/compile.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { linearFromText } from '../../control/iptables/linear.ts';
import { Dataplane } from '../../control/dataplane.ts';
import type { RuleSet } from '../../control/types.ts';
import { Pipeline, V_FORWARD, V_REPLY, V_PASS } from '../../dataplane/pipeline.ts';
import { Rng } from '../../dataplane/select.ts';
import { Ipv6Chain, ipv6Walk, l4Checksum6Valid } from '../../dataplane/wire/ipv6.ts';
import { icmpv6ChecksumValid } from '../../dataplane/wire/icmpv6.ts';
import { CT6_REPLY_DST, CT6_REPLY_SRC } from '../../dataplane/conntrack6.ts';

const RULES: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
  services: [
    {
      namespace: 'default', name: 'web', clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
      ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
      ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }, { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 }],
      endpoints: [{ address: '10.64.1.7' }, { address: 'fd00:10:64:1::7' }],
    },
    {
      namespace: 'default', name: 'empty', clusterIP: 'fd00:10:96::e', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [],
    },
  ],
};

// [packet, what both deciders do with it]
const CASES: Array<[string, number, string]> = [
  // UDP [2001:db8::35]:40000 > [fd00:10:96::a]:53: from outside the cluster CIDR: DNAT and masquerade
  ['60000000000d114020010db8000000000000000000000035fd00001000960000000000000000000a9c400035000df3ed68656c6c6f', V_FORWARD, 'ClusterIP from outside'],
  // UDP [fd00:10:64:2::5]:40001 > [fd00:10:96::a]:53: a pod: DNAT only
  ['60000000000d1140fd000010006400020000000000000005fd00001000960000000000000000000a9c410035000d245f68656c6c6f', V_FORWARD, 'ClusterIP from a pod'],
  // TCP SYN [2001:db8::35]:41000 > [fd00:10:96::a]:80
  ['600000000014064020010db8000000000000000000000035fd00001000960000000000000000000aa028005000000000000000005002ffffe3cb0000', V_FORWARD, 'TCP to the ClusterIP'],
  // TCP SYN [2001:db8::35]:41001 > [fd00:10:96::e]:80: no endpoints: REJECT (ICMPv6 port unreachable)
  ['600000000014064020010db8000000000000000000000035fd00001000960000000000000000000ea029005000000000000000005002ffffe3c60000', V_REPLY, 'no endpoints'],
  // TCP SYN [2001:db8::35]:41002 > [fd00:50::2]:30080: the NodePort on the node's IPv6 address
  ['600000000014064020010db8000000000000000000000035fd000050000000000000000000000002a02a758000000000000000005002ffff6ef70000', V_FORWARD, 'NodePort'],
  // TCP SYN [fd00:10:64:1::7]:41003 > [fd00:10:96::a]:80: the endpoint to its own service: hairpin, masqueraded
  ['6000000000140640fd000010006400010000000000000007fd00001000960000000000000000000aa02b005000000000000000005002ffff143a0000', V_FORWARD, 'hairpin'],
  // TCP SYN [2001:db8::35]:41004 > [fd00:10:96::f]:80: no service
  ['600000000014064020010db8000000000000000000000035fd00001000960000000000000000000fa02c005000000000000000005002ffffe3c20000', V_PASS, 'no service'],
  // UDP [2001:db8::35]:40005 > [fd00:10:96::a]:54: the ClusterIP, a port it has not
  ['60000000000d114020010db8000000000000000000000035fd00001000960000000000000000000a9c450036000df3e768656c6c6f', V_PASS, 'no such port'],
];

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function sumOk(b: Uint8Array): boolean {
  const c = new Ipv6Chain();
  ipv6Walk(b, 0, c);
  return c.proto === 58 ? icmpv6ChecksumValid(b, 0, c.l4Off, c.l4Len) : l4Checksum6Valid(b, 0, c.l4Off, c.l4Len, c.proto);
}

function model() {
  const v = validateRuleSet(structuredClone(RULES));
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  return v.model;
}

t.test('the linear IPv6 decider and the compiled one agree through Pipeline.process, byte for byte', async (t) => {
  const m = model();
  const tables = compile(m);
  const compiled = new Pipeline({ rng: new Rng(1) });
  const walk = linearFromText(writeIptables(m, { family: 6 }), { localAddresses: m.node.addresses, family: 6 });
  const linear = new Pipeline({ rng: new Rng(1), linear6: walk });
  for (const [h, want, what] of CASES) {
    const a = new Uint8Array(Buffer.from(h, 'hex'));
    const b = a.slice();
    const va = compiled.process(a, 0, a.length, tables, 1000);
    const before = walk.rulesVisited;
    const vb = linear.process(b, 0, b.length, tables, 1000);
    t.equal(va, want, `${what}: compiled`);
    t.equal(vb, want, `${what}: linear`);
    t.ok(walk.rulesVisited > before, `${what}: the walk decided`);
    if (want === V_FORWARD) {
      t.equal(hex(b), hex(a), `${what}: the same packet out`);
      t.ok(sumOk(b), `${what}: checksums valid`);
    } else if (want === V_REPLY) {
      t.equal(hex(linear.reply.subarray(0, linear.replyLen)), hex(compiled.reply.subarray(0, compiled.replyLen)), `${what}: the same ICMPv6 error`);
      t.equal(linear.reply[40], 1, 'destination unreachable');
      t.equal(linear.reply[41], 4, 'port unreachable');
    }
  }
  const ct = linear.conntrackV6!;
  t.equal(ct.size, compiled.conntrackV6!.size);
  t.equal(ct.size, 5);
  t.same(linear.counters.snapshot().events, compiled.counters.snapshot().events, 'the same events counted (new flows, masquerade, hairpin, rejects)');
  // the flows the walk made: the service named, no tables entry, the reply tuple to the masquerade address
  const flows = [...ct.entries()];
  const web = flows.find((e) => ct.address(e, CT6_REPLY_SRC) === 'fd00:10:64:1::7' && e.origSport === 40000)!;
  t.equal(web.serviceName, 'default/web:dns');
  t.equal(web.serviceIndex, -1, 'decided by the walk');
  t.equal(web.masquerade, true);
  t.equal(ct.address(web, CT6_REPLY_DST), 'fd00:50::2');
  // the reply comes back through the tracked flow in both
  const reply = (p: Pipeline) => {
    // UDP [fd00:10:64:1::7]:5353 > [fd00:50::2]:40000 "hello"
    const r = new Uint8Array(Buffer.from('60000000000d1140fd000010006400010000000000000007fd00005000000000000000000000000214e99c40000d100968656c6c6f', 'hex'));
    const c = new Ipv6Chain();
    ipv6Walk(r, 0, c);
    t.ok(l4Checksum6Valid(r, 0, c.l4Off, c.l4Len, 17), 'the reply is well formed');
    t.equal(p.process(r, 0, r.length, tables, 1001), V_FORWARD);
    return hex(r);
  };
  t.equal(reply(linear), reply(compiled), 'the reply translated back alike');
});

t.test('IPv4 packets keep their own walk; IPv6 ones go to linear6 only', async (t) => {
  const m = model();
  const tables = compile(m);
  const walk6 = linearFromText(writeIptables(m, { family: 6 }), { localAddresses: m.node.addresses, family: 6 });
  const p = new Pipeline({ rng: new Rng(1), linear6: walk6 });
  // UDP 192.168.50.9:40000 > 10.96.0.10:53: the compiled IPv4 tables (no IPv4 walk set)
  const v4 = new Uint8Array(Buffer.from('4500001c1234400040112b82c0a832090a60000a9c4000350008664d', 'hex'));
  t.equal(p.process(v4, 0, v4.length, tables, 1000), V_FORWARD);
  t.equal(walk6.rulesVisited, 0, 'the ip6tables walk saw no IPv4 packet');
  t.equal([...p.conntrack.entries()][0].serviceIndex, 0, 'decided by the tables');
});

t.test('the run path: a Dataplane with decider linear builds the ip6tables walk with each rule set', async (t) => {
  const dp = new Dataplane({ decider: 'linear', clock: () => 1000 });
  t.equal(dp.pipeline.linear6, null);
  dp.holder.apply(structuredClone(RULES));
  t.not(dp.pipeline.linear6, null, 'set with the tables');
  t.not(dp.pipeline.linear, null);
  const b = new Uint8Array(Buffer.from(CASES[0][0], 'hex'));
  t.equal(dp.pipeline.process(b, 0, b.length, dp.tables!, 1000), V_FORWARD);
  const e = [...dp.pipeline.conntrackV6!.entries()][0];
  t.equal(e.serviceIndex, -1, 'decided by the walk');
  t.equal(e.serviceName, 'default/web:dns');
  // a rule set without IPv6: no ip6tables walk
  dp.holder.apply({ apiVersion: 'tunproxy.dev/v1', node: { addresses: ['192.168.50.2'], clusterCIDR: '10.64.0.0/16' }, services: [] });
  t.equal(dp.pipeline.linear6, null);
  // the compiled decider builds none
  const dc = new Dataplane({ clock: () => 1000 });
  dc.holder.apply(structuredClone(RULES));
  t.equal(dc.pipeline.linear6, null);
});

t.test('tunproxy run\'s two threads: the ip6tables text crosses with the tables and is built into linear6 on the packet side', async (t) => {
  const { twoThreads } = await import('../support/threads.ts');
  const dp = new Dataplane({ clock: () => 1000 });
  const { remote } = twoThreads(t, dp);
  const m = model();
  // what control-worker.ts sends on each swap with --decider linear
  await remote.sendTables(compile(m), { text: writeIptables(m), text6: writeIptables(m, { family: 6 }), localAddresses: m.node.addresses });
  t.not(dp.pipeline.linear6, null);
  const b = new Uint8Array(Buffer.from(CASES[2][0], 'hex'));
  t.equal(dp.pipeline.process(b, 0, b.length, dp.tables!, 1000), V_FORWARD);
  t.equal([...dp.pipeline.conntrackV6!.entries()][0].serviceIndex, -1, 'decided by the walk');
  await remote.sendTables(compile(m), { text: writeIptables(m), text6: null, localAddresses: m.node.addresses });
  t.equal(dp.pipeline.linear6, null, 'no IPv6 half: no walk');
});
