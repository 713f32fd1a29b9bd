/**
 * The IPv6 path never throws, whatever the bytes: random packets and
 * single-byte mutations of well-formed ones (extension headers, fragments,
 * ICMPv6 errors with quotes, TCP/UDP to the ClusterIP) through a Pipeline
 * with dual-stack tables; every packet gets a verdict, every drop a reason.
 */
import t from 'tap';
import fc from 'fast-check';
import { validateRuleSet } from '../../control/validate.ts';
import { compile } from '../../control/compile.ts';
import type { RuleSet } from '../../control/types.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { Pipeline, V_FORWARD, V_REPLY, V_DROP, V_PASS } from '../../dataplane/pipeline.ts';
import { Rng } from '../../dataplane/select.ts';
import { writeIpv6Header, l4Checksum6 } from '../../dataplane/wire/ipv6.ts';
import { buildIcmpv6Error } from '../../dataplane/wire/icmpv6.ts';

const r = validateRuleSet({
  apiVersion: 'tunproxy.dev/v1',
  node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
  services: [
    { namespace: 'a', name: 'w', clusterIP: 'fd00:10:96::a', ipFamilies: ['IPv6'], ports: [{ name: 'u', protocol: 'UDP', port: 53, targetPort: 5353 }, { name: 't', protocol: 'TCP', port: 80, targetPort: 8080 }], endpoints: [{ address: 'fd00:10:64:1::7' }] },
    { namespace: 'a', name: 'e', clusterIP: 'fd00:10:96::e', ipFamilies: ['IPv6'], ports: [{ name: 't', protocol: 'TCP', port: 80, targetPort: 80 }], endpoints: [] },
  ],
} satisfies RuleSet);
if (!r.ok) throw new Error(JSON.stringify(r.errors));
const tables = compile(r.model);
const A = (s: string): Uint32Array => parseIPv6(s)!;

function seedPackets(): Uint8Array[] {
  const out: Uint8Array[] = [];
  const udp = new Uint8Array(53);
  writeIpv6Header(udp, 0, 13, 17, 64, A('2001:db8::1'), 0, A('fd00:10:96::a'), 0);
  udp.set([0x13, 0x88, 0, 53, 0, 13], 40);
  const k = l4Checksum6(udp, 0, 40, 13, 6, 17);
  udp[46] = k >> 8; udp[47] = k;
  out.push(udp);
  const tcp = new Uint8Array(60);
  writeIpv6Header(tcp, 0, 20, 6, 64, A('2001:db8::1'), 0, A('fd00:10:96::e'), 0);
  tcp.set([0x9c, 0x40, 0, 80], 40);
  tcp[52] = 0x50; tcp[53] = 2;
  out.push(tcp);
  const chain = new Uint8Array(40 + 32 + 13);
  writeIpv6Header(chain, 0, 45, 0, 64, A('2001:db8::1'), 0, A('fd00:10:96::a'), 0);
  chain.set([43, 0, 1, 4, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 44, 0, 1, 4, 0, 0, 0, 0, 17, 0, 0, 1, 1, 2, 3, 4], 40);
  chain.set(udp.subarray(40), 72);
  out.push(chain);
  const err = new Uint8Array(200);
  const n = buildIcmpv6Error(err, 0, udp, 0, udp.length, 1, 4, A('fd00:10:64:1::7'), 0);
  out.push(err.slice(0, n));
  return out;
}

t.test('random and mutated IPv6 packets: a verdict each, never a throw', async (t) => {
  const seeds = seedPackets();
  const pl = new Pipeline({ rng: new Rng(9) });
  // warm the conntrack with the seeds so that hits and ICMPv6 errors of tracked flows are exercised
  for (const s of seeds) pl.process(s.slice(), 0, s.length, tables, 0);
  let n = 0;
  fc.assert(fc.property(
    fc.oneof(
      fc.uint8Array({ minLength: 0, maxLength: 120 }).map((b) => { if (b.length) b[0] = (b[0] & 0x0f) | 0x60; return b; }),
      fc.record({ i: fc.nat(seeds.length - 1), at: fc.nat(199), v: fc.integer({ min: 0, max: 255 }), cut: fc.nat(200) }).map(({ i, at, v, cut }) => {
        const b = seeds[i].slice();
        if (at < b.length && at !== 0) b[at] = v;
        return b.subarray(0, Math.max(1, Math.min(b.length, cut + 1)));
      }),
    ),
    (b) => {
      const v = pl.process(b, 0, b.length, tables, 1);
      n++;
      return v === V_FORWARD || v === V_REPLY || v === V_DROP || v === V_PASS;
    },
  ), { numRuns: 20000, seed: 613 });
  const s = pl.counters.snapshot();
  const dropped = Object.values(s.drops).reduce((a, b) => a + b, 0);
  t.equal(dropped, s.packets.drop, 'every drop has a reason');
  t.ok(s.drops.malformed > 0 && s.events.ipv6_packets > 0);
  t.comment(`${n} packets: ${JSON.stringify(s.packets)}, malformed ${JSON.stringify(s.malformed)}`);
});
