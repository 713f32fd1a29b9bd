/**
 * The IPv6 tables cross to the packet thread with the IPv4 ones: shared
 * arrays for the indexes, the encoded Tables of the IPv6 half, and the
 * packet thread's Pipeline serves IPv6 from what it materialized.
 */
import t from 'tap';
import { validateRuleSet } from '../../control/validate.ts';
import { compile } from '../../control/compile.ts';
import type { RuleSet, Service } from '../../control/types.ts';
import { shareTables, TablesEncoder, TablesMaterializer } from '../../dataplane/tables-wire.ts';
import { lookup6 } from '../../dataplane/tables6.ts';
import { LookupResult, LOOKUP_DNAT, LOOKUP_DROP_SOURCE_RANGE } from '../../dataplane/tables.ts';
import { parseIPv6, formatIPv6 } from '../../dataplane/addr6.ts';
import { Pipeline, V_FORWARD } from '../../dataplane/pipeline.ts';
import { Rng } from '../../dataplane/select.ts';
import { writeIpv6Header, l4Checksum6, l4Checksum6Valid } from '../../dataplane/wire/ipv6.ts';

const node = { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' };
const web: Service = {
  namespace: 'default', name: 'web', clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
  ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
  ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }],
  endpoints: [{ address: '10.64.1.7' }, { address: 'fd00:10:64:1::7' }],
  sessionAffinity: 'ClientIP',
};
const lb: Service = {
  namespace: 'default', name: 'lb', clusterIP: 'fd00:10:96::b', ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
  loadBalancerIPs: ['2001:db8:1b::1'], loadBalancerSourceRanges: ['2001:db8:cafe::/48'],
  ports: [{ name: 'https', protocol: 'TCP', port: 443, targetPort: 8443, nodePort: 30443 }], endpoints: [{ address: 'fd00:10:64:3::3' }],
};

t.test('encode → (postMessage) → materialize keeps the IPv6 tables, on shared memory', async (t) => {
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node, services: [web, lb] } satisfies RuleSet);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const shared = shareTables(compile(r.model));
  t.ok(shared.v6!.ids.slots.buffer instanceof SharedArrayBuffer);
  t.ok(shared.v6!.words.buffer instanceof SharedArrayBuffer);
  t.ok(shared.v6!.base.serviceRows.buffer instanceof SharedArrayBuffer);
  const wire = structuredClone(new TablesEncoder().encode(shared));
  t.ok(wire.v6, 'the wire form carries the IPv6 half');
  const m = new TablesMaterializer(wire, null).all().tables;
  const t6 = m.v6!;
  t.equal(t6.base.services.length, 2);
  t.equal(t6.base.services[0].name, 'default/web:dns');
  t.equal(t6.base.services[0].affinityMs, 10800 * 1000);
  t.equal(formatIPv6(t6.words, t6.masqId * 4), 'fd00:50::2');
  t.equal(t6.cidr6!.bits, 56);
  const w = new Uint32Array(8);
  const ask = (src: string, dst: string, proto: number, port: number): number => {
    w.set(parseIPv6(src)!, 0);
    w.set(parseIPv6(dst)!, 4);
    return lookup6(t6, proto, w, 0, 4, port, new LookupResult());
  };
  t.equal(ask('2001:db8::1', 'fd00:10:96::a', 17, 53), LOOKUP_DNAT);
  t.equal(ask('2001:db8:cafe::1', '2001:db8:1b::1', 6, 443), LOOKUP_DNAT, 'admitted by the IPv6 source range');
  t.equal(ask('2001:db8:beef::1', '2001:db8:1b::1', 6, 443), LOOKUP_DROP_SOURCE_RANGE, 'outside it');
  t.same(t6.sourceRanges6[1]!.map((c) => c.bits), [48]);
  // the packet side serves IPv6 from the materialized tables
  const pl = new Pipeline({ rng: new Rng(1) });
  const p = new Uint8Array(53);
  writeIpv6Header(p, 0, 13, 17, 64, parseIPv6('2001:db8::1')!, 0, parseIPv6('fd00:10:96::a')!, 0);
  p.set([0x13, 0x88, 0, 53, 0, 13], 40);
  p.set(Buffer.from('hello'), 48);
  const k = l4Checksum6(p, 0, 40, 13, 6, 17);
  p[46] = k >> 8; p[47] = k;
  t.equal(pl.process(p, 0, p.length, m, 0), V_FORWARD);
  const dst = new Uint32Array(4);
  for (let i = 0; i < 4; i++) dst[i] = ((p[24 + 4 * i] << 24) | (p[25 + 4 * i] << 16) | (p[26 + 4 * i] << 8) | p[27 + 4 * i]) >>> 0;
  t.equal(formatIPv6(dst, 0), 'fd00:10:64:1::7');
  t.ok(l4Checksum6Valid(p, 0, 40, 13, 17));
});

t.test('an IPv4-only snapshot has no IPv6 part on the wire', async (t) => {
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node: { addresses: ['192.168.50.2'], clusterCIDR: '10.64.0.0/16' }, services: [] });
  if (!r.ok) throw new Error('invalid');
  const wire = new TablesEncoder().encode(shareTables(compile(r.model)));
  t.notOk(wire.v6);
  t.notOk(new TablesMaterializer(wire, null).all().tables.v6);
});

t.test('the IPv6 half is materialized in slices too, after the IPv4 entries, and reused next time', async (t) => {
  // 1 000 IPv4 and 3 000 IPv6 service ports: the slices (a zero budget: one chunk of 256 each) cover both halves
  const services: Service[] = [];
  for (let i = 0; i < 1000; i++) {
    services.push({ namespace: 'v4', name: `s${i}`, clusterIP: `10.96.${i >> 8}.${i & 255}`, ports: [{ name: 'u', protocol: 'UDP', port: 53, targetPort: 5353 }], endpoints: [{ address: '10.64.1.7' }] });
  }
  for (let i = 0; i < 3000; i++) {
    services.push({
      namespace: 'v6', name: `s${i}`, clusterIP: `fd00:10:96::${(i + 1).toString(16)}`, ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack',
      ports: [{ name: 'u', protocol: 'UDP', port: 53, targetPort: 5353 }], endpoints: [{ address: `fd00:10:64:1::${(i + 1).toString(16)}` }],
    });
  }
  const r = validateRuleSet({ apiVersion: 'tunproxy.dev/v1', node, services } satisfies RuleSet);
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  const enc = new TablesEncoder();
  const compiled = shareTables(compile(r.model));
  const wire = structuredClone(enc.encode(compiled));
  const m = new TablesMaterializer(wire, null);
  let steps = 0;
  while (!m.step(0)) steps++;
  steps++;
  t.equal(steps, Math.ceil(1000 / 256) + Math.ceil(3000 / 256) - 1, 'one chunk of 256 per slice and half: 4 slices for IPv4, 12 for IPv6, the slice that ends IPv4 begins IPv6');
  t.equal(m.built, 4000, 'every entry of both halves built');
  const mat = m.result();
  const t6 = mat.tables.v6!;
  t.equal(t6.base.services.length, 3000);
  t.equal(t6.base.services[2999].name, 'v6/s2999:u');
  const w = new Uint32Array(8);
  w.set(parseIPv6('2001:db8::1')!, 0);
  w.set(parseIPv6('fd00:10:96::bb8')!, 4);
  const out = new LookupResult();
  t.equal(lookup6(t6, 17, w, 0, 4, 53, out), LOOKUP_DNAT, 'the last IPv6 ClusterIP answers');
  t.equal(t6.base.services[out.svcIndex].name, 'v6/s2999:u');
  t.ok(mat.v6, 'the IPv6 half is kept for the next snapshot');
  // the same tables again: both halves' entries reused, none built
  const m2 = new TablesMaterializer(structuredClone(enc.encode(compiled)), mat);
  const again = m2.all();
  t.equal(m2.reused, 4000, 'all 4 000 entries reused');
  t.equal(m2.built, 0, 'none built');
  t.ok(again.tables.v6);
  t.equal(again.tables.v6!.base.services.length, 3000);
});
