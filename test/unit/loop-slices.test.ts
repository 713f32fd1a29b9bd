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
    t.equal(loop.stats.generation, 2, 'swapped at the next batch');
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
