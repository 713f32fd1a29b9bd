/**
 * The loop's housekeeping in slices: after a swap, UDP flows to an endpoint
 * that left the service are removed (kube-proxy's stale UDP conntrack
 * problem), TCP flows and flows to endpoints that stay are kept — with the
 * compiler's tables and with the views the packet thread makes from the
 * control worker's wire form; conntrack expiry likewise, over many turns.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { Dataplane } from '../../control/dataplane.ts';
import { KickDevice } from '../support/threads.ts';
import { RuleSetHolder } from '../../control/runtime.ts';
import { TablesEncoder, TablesMaterializer, shareTables } from '../../dataplane/tables-wire.ts';
import { parseIPv4, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import type { RuleSet } from '../../control/types.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { syntheticRuleSet } from '../../bench/gen.ts';
import { CT6_ORIG_DST, CT6_ORIG_SRC, CT6_REPLY_DST, CT6_REPLY_SRC } from '../../dataplane/conntrack6.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const idle = new KickDevice();
const turns = (n: number) => new Promise<void>((resolve) => {
  const step = (k: number) => (k === 0 ? resolve() : setImmediate(() => step(k - 1)));
  step(n);
});

function withoutEndpoint(rs: RuleSet, addr: string): RuleSet {
  return { ...rs, services: rs.services.map((s) => (s.name === 'kube-dns' ? { ...s, endpoints: (s.endpoints ?? []).filter((e) => e.address !== addr) } : s)) };
}

for (const via of ['compiler', 'wire views'] as const) {
  t.test(`stale UDP flows removed after a swap, in slices (${via})`, async (t) => {
    let now = 1000;
    const dp = new Dataplane({ clock: () => now, conntrackMax: 1 << 17 });
    const holder = new RuleSetHolder({ prepare: shareTables });
    const enc = new TablesEncoder();
    const tablesOf = (rs: RuleSet) => {
      holder.apply(rs);
      return via === 'compiler' ? holder.current! : new TablesMaterializer(enc.encode(holder.current!), null).all().tables;
    };
    dp.installTables(tablesOf(golden));
    const loop = dp.attach(idle, { expiryIntervalMs: 0 });
    const ct = dp.pipeline.conntrack;
    const ep7 = parseIPv4('10.64.1.7');
    const ep8 = parseIPv4('10.64.1.8');
    const client = parseIPv4('10.64.1.20');
    const vip = parseIPv4('10.32.0.10');
    const add = (proto: number, ep: number, sport: number, name = 'kube-system/kube-dns:dns', serviceIndex = 0) =>
      ct.insert(proto, client, vip, sport, 53, ep, client, 53, sport, now, { serviceName: name, serviceIndex, endpointAddr: ep, endpointPort: 53, masquerade: false });
    for (let p = 0; p < 20000; p++) add(PROTO_UDP, ep7, 10000 + p);
    add(PROTO_UDP, ep8, 9000);
    add(PROTO_TCP, ep8, 9001, 'kube-system/kube-dns:dns-tcp');
    add(PROTO_UDP, ep8, 9002, 'no/such:service');
    // the service port moved since the flow began (another position): found by its uid
    add(PROTO_UDP, ep7, 9003, 'kube-system/kube-dns:dns', 3);
    add(PROTO_UDP, ep8, 9004, 'kube-system/kube-dns:dns', 3);
    t.equal(ct.size, 20005);
    dp.installTables(tablesOf(withoutEndpoint(golden, '10.64.1.8')));
    idle.kick();
    t.equal(loop.stats.generation, 2, 'swapped in at once');
    await turns(200);
    t.equal(loop.stats.staleRemoved, 3, 'the UDP flows to the endpoint that left and the one of a service that is gone');
    t.equal(ct.size, 20002);
    t.ok(ct.lookup(PROTO_UDP, client, vip, 9003, 53, now), 'a flow whose service port moved, to an endpoint that stays, is kept');
    t.ok(ct.lookup(PROTO_TCP, client, vip, 9001, 53, now), 'the TCP flow to the leaving endpoint finishes');
    t.ok(ct.lookup(PROTO_UDP, client, vip, 10000, 53, now), 'flows to the endpoint that stays are kept');
    dp.detach();
  });
}

t.test('conntrack expiry in slices: every expired flow goes, over several turns', async (t) => {
  let now = 1000;
  const dp = new Dataplane({ clock: () => now, conntrackMax: 1 << 18 });
  dp.holder.apply(golden);
  const loop = dp.attach(idle, { expiryIntervalMs: 5 });
  const ct = dp.pipeline.conntrack;
  const ep = parseIPv4('10.64.1.7');
  for (let p = 0; p < 200000; p++) {
    const client = 0x0a400100 + (p >>> 15);
    ct.insert(PROTO_UDP, client, parseIPv4('10.32.0.10'), 1024 + (p & 0x7fff), 53, ep, client, 53, 1024 + (p & 0x7fff), now, { serviceName: 'kube-system/kube-dns:dns', serviceIndex: 0, endpointAddr: ep, endpointPort: 53, masquerade: false });
  }
  t.equal(ct.size, 200000);
  now += 10 * 60_000;
  const t0 = Date.now();
  while (ct.size > 0 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 10));
  t.equal(ct.size, 0, 'all expired');
  t.equal(loop.stats.expired, 200000);
  dp.detach();
});

/**
 * kube-proxy clears the UDP conntrack entries of an endpoint that stopped
 * serving (deleted, or serving → not serving), not of one that is
 * terminating while it still serves: its flows go on even though new flows
 * go to the ready endpoints. IPv6 flows likewise, their endpoint compared on
 * all 128 bits (a flow whose endpoint shares the 32-bit fold of a removed one stays).
 */
const DUAL = (eps: Array<{ address: string; ready?: boolean; serving?: boolean; terminating?: boolean }>): RuleSet => ({
  apiVersion: 'tunproxy.dev/v1',
  node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
  services: [{
    namespace: 'default', name: 'web', clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
    ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
    ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }, { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
    endpoints: eps,
  }],
});
const READY = ['10.64.1.7', '10.64.1.8', 'fd00:10:64:1::7', 'fd00:10:64:1::8'];
const TERMINATING = { ready: false, serving: true, terminating: true };

for (const via of ['compiler', 'wire views'] as const) {
  t.test(`a terminating endpoint that still serves keeps its UDP flows; one that stopped serving loses them; IPv4 and IPv6 (${via})`, async (t) => {
    const now = 1000;
    const dp = new Dataplane({ clock: () => now, conntrackMax: 1 << 12 });
    const holder = new RuleSetHolder({ prepare: shareTables });
    const enc = new TablesEncoder();
    const tablesOf = (rs: RuleSet) => {
      holder.apply(rs);
      return via === 'compiler' ? holder.current! : new TablesMaterializer(enc.encode(holder.current!), null).all().tables;
    };
    dp.installTables(tablesOf(DUAL(READY.map((address) => ({ address })))));
    const loop = dp.attach(idle, { expiryIntervalMs: 0 });
    const ct = dp.pipeline.conntrack;
    const ct6 = dp.pipeline.ipv6().conntrack;
    const client = parseIPv4('192.168.50.9');
    const vip = parseIPv4('10.96.0.10');
    const add4 = (proto: number, ep: string, sport: number, name: string, port: number) =>
      ct.insert(proto, client, vip, sport, port === 5353 ? 53 : 80, parseIPv4(ep), client, port, sport, now, { serviceName: name, serviceIndex: 0, endpointAddr: parseIPv4(ep), endpointPort: port, masquerade: false });
    const w = new Uint32Array(16);
    const add6 = (proto: number, ep: string, sport: number, name: string, port: number) => {
      w.set(parseIPv6('2001:db8::35')!, CT6_ORIG_SRC);
      w.set(parseIPv6('fd00:10:96::a')!, CT6_ORIG_DST);
      w.set(parseIPv6(ep)!, CT6_REPLY_SRC);
      w.set(parseIPv6('2001:db8::35')!, CT6_REPLY_DST);
      return ct6.insert6(proto, w, sport, port === 5353 ? 53 : 80, port, sport, now, { serviceName: name, serviceIndex: 0, masquerade: false })!;
    };
    add4(PROTO_UDP, '10.64.1.7', 40001, 'default/web:dns', 5353);
    add4(PROTO_UDP, '10.64.1.8', 40002, 'default/web:dns', 5353);
    add4(PROTO_TCP, '10.64.1.8', 40003, 'default/web:http', 8080);
    add6(PROTO_UDP, 'fd00:10:64:1::7', 40001, 'default/web:dns', 5353);
    add6(PROTO_UDP, 'fd00:10:64:1::8', 40002, 'default/web:dns', 5353);
    add6(PROTO_TCP, 'fd00:10:64:1::8', 40003, 'default/web:http', 8080);
    // fd00:10:64:8::1 folds to the same 32 bits as fd00:10:64:1::8, and is not an endpoint: removed
    add6(PROTO_UDP, 'fd00:10:64:8::1', 40004, 'default/web:dns', 5353);
    t.equal(ct.size, 3);
    t.equal(ct6.size, 4);

    const swap = async (eps: Array<{ address: string; ready?: boolean; serving?: boolean; terminating?: boolean }>) => {
      dp.installTables(tablesOf(DUAL(eps)));
      idle.kick();
      await turns(50);
    };
    await swap(READY.map((address) => (address.endsWith('8') ? { address, ...TERMINATING } : { address })));
    t.equal(loop.stats.staleRemoved, 1, 'only the IPv6 flow to an address that is no endpoint (its fold is one)');
    t.equal(ct.size, 3, 'IPv4: the terminating endpoint still serves, its flows stay');
    t.equal(ct6.size, 3, 'IPv6: the same');
    await swap(READY.map((address) => (address.endsWith('8') ? { address, ready: false, serving: false, terminating: true } : { address })));
    t.equal(loop.stats.staleRemoved, 3, 'no longer serving: its UDP flows go, in both families');
    t.ok(ct.lookup(PROTO_UDP, client, vip, 40001, 53, now), 'IPv4: the flow to the ready endpoint stays');
    t.ok(ct.lookup(PROTO_TCP, client, vip, 40003, 80, now), 'IPv4: the TCP flow to the leaving endpoint finishes');
    t.notOk(ct.lookup(PROTO_UDP, client, vip, 40002, 53, now), 'IPv4: the UDP flow to it is gone');
    const left6 = [...ct6.entries(now)].map((e) => `${e.proto}/${ct6.address(e, CT6_REPLY_SRC)}`).sort();
    t.same(left6, ['17/fd00:10:64:1::7', '6/fd00:10:64:1::8'], 'IPv6: the ready endpoint\'s flow and the TCP flow stay');
    dp.detach();
  });
}

/**
 * A large rule set: the sweep's uid index (kept from one swap to the next) is
 * cleared over the slices, a chunk at a time, not at once right after the swap.
 * 40 000 services make an index of 131 072 entries, several chunks; a second
 * swap reuses it with every service at another position, so the flows are
 * found by their uid in an index cleared and built again.
 */
t.test('stale UDP flows of a 40 000-service rule set: the index cleared in slices, reused by the next swap', async (t) => {
  const now = 1000;
  const N = 40_000;
  const dp = new Dataplane({ clock: () => now, conntrackMax: 1 << 12 });
  const base = syntheticRuleSet(N, { protocol: 'UDP', nodePorts: 0 });
  const without = (rs: RuleSet, drop: (i: number) => boolean): RuleSet => ({
    ...rs,
    services: rs.services.map((s) => {
      const i = Number(s.name.slice(4));
      return drop(i) ? { ...s, endpoints: (s.endpoints ?? []).filter((_, j) => j !== 1) } : s;
    }),
  });
  dp.holder.apply(base);
  const loop = dp.attach(idle, { expiryIntervalMs: 0 });
  const ct = dp.pipeline.conntrack;
  const client = parseIPv4('10.200.0.1');
  const vipOf = (i: number) => parseIPv4('10.96.0.10') + i;
  const epOf = (i: number) => parseIPv4('10.64.0.10') + i * 3 + 1; // each service's second endpoint
  const flows: number[] = [];
  for (let i = 0; i < N; i += 1000) {
    flows.push(i);
    ct.insert(PROTO_UDP, client, vipOf(i), 20000 + i / 1000, 80, epOf(i), client, 8080, 20000 + i / 1000, now, { serviceName: `ns-${Math.floor(i / 100)}/svc-${i}:p`, serviceIndex: i, endpointAddr: epOf(i), endpointPort: 8080, masquerade: false });
  }
  t.equal(ct.size, 40);
  const settle = async (removed: number) => {
    for (let k = 0; k < 200 && loop.stats.staleRemoved < removed; k++) await turns(20);
    await turns(20);
  };
  const alive = (i: number) => ct.lookup(PROTO_UDP, client, vipOf(i), 20000 + i / 1000, 80, now) !== null;

  // swap 1: the second endpoint leaves every service i % 2000 === 0
  dp.installTables((dp.holder.apply(without(base, (i) => i % 2000 === 0)), dp.holder.current!));
  idle.kick();
  await settle(20);
  t.equal(loop.stats.staleRemoved, 20, 'the 20 flows to an endpoint that left');
  t.same(flows.filter(alive), flows.filter((i) => i % 2000 !== 0), 'the flows to endpoints that stay are kept');

  // swap 2: the services in reverse order (every flow's service port moved), and two more leave
  const moved = without(base, (i) => i % 2000 === 0 || i === 1000 || i === 3000);
  dp.installTables((dp.holder.apply({ ...moved, services: [...moved.services].reverse() }), dp.holder.current!));
  idle.kick();
  await settle(22);
  t.equal(loop.stats.staleRemoved, 22, 'two more: the services found by uid at their new positions');
  t.same(flows.filter(alive), flows.filter((i) => i % 2000 !== 0 && i !== 1000 && i !== 3000), 'every other flow found its service and stays');
  dp.detach();
});
