/**
 * Conntrack filters on IPv6 flows (GET/DELETE /v1/conntrack, `tunproxy
 * conntrack -L/-D`): an address filter takes IPv4 or IPv6 text, the
 * endpoint also `[addr]:port`, an IPv6 address matches on all 128 bits
 * (read from Conntrack6's side array, never the entry's 32-bit folds), an
 * address of one family selects flows of that family only, and a malformed
 * address is a 400 naming the field.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROTO_TCP, PROTO_UDP, parseIPv4 } from '../../dataplane/addr.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_SRC, CT6_ORIG_DST, CT6_REPLY_SRC, CT6_REPLY_DST } from '../../dataplane/conntrack6.ts';
import { FlowLister, deleteFlowsSliced } from '../../control/worker/flows.ts';
import { conntrackFilter } from '../../control/api/conntrack.ts';
import type { ConntrackQuery } from '../../control/api/conntrack.ts';
import { ApiError } from '../../control/api/errors.ts';
import { Dataplane } from '../../control/dataplane.ts';
import { startApi } from '../../control/server.ts';
import { ApiClient } from '../../control/client.ts';
import { statsText } from '../../control/commands/stats.ts';
import { V_FORWARD } from '../../dataplane/verdict.ts';
import type { RuleSet } from '../../control/types.ts';

const A = (s: string): Uint32Array => parseIPv6(s)!;

/**
 * One IPv4 flow and three IPv6 flows. 2001:db8::35 and 2001:db8:0:35:: have
 * the same 32-bit xor fold (the entry's address fields): only a comparison
 * of all four words tells them apart.
 */
function tables() {
  let now = 1000;
  const clock = () => now;
  const ct = new Conntrack({ seed: 1, clock });
  const ct6 = new Conntrack6({ seed: 2, clock });
  ct.insert(PROTO_UDP, parseIPv4('172.16.1.35'), parseIPv4('10.32.0.10'), 44560, 53, parseIPv4('10.64.1.7'), parseIPv4('10.64.1.1'), 53, 44560, now, { serviceName: 'kube-system/kube-dns:dns', serviceIndex: 0, masquerade: true, endpointAddr: parseIPv4('10.64.1.7'), endpointPort: 53 });
  const w = new Uint32Array(16);
  const add6 = (proto: number, os: string, od: string, rs: string, rd: string, sport: number, dport: number, epPort: number, svc: string) => {
    w.set(A(os), CT6_ORIG_SRC);
    w.set(A(od), CT6_ORIG_DST);
    w.set(A(rs), CT6_REPLY_SRC);
    w.set(A(rd), CT6_REPLY_DST);
    return ct6.insert6(proto, w, sport, dport, epPort, sport, now, { serviceName: svc, serviceIndex: 0, masquerade: true })!;
  };
  add6(PROTO_UDP, '2001:db8::35', 'fd00:10:96::a', 'fd00:10:244:1::7', 'fd00::1', 40000, 53, 53, 'kube-system/kube-dns:dns');
  add6(PROTO_TCP, '2001:db8:0:35::', 'fd00:10:96::b', 'fd00:10:244:2::9', 'fd00::1', 41000, 80, 8080, 'default/web:http');
  add6(58, '2001:db8::99', 'fd00:10:96::c', 'fd00:10:244:1::8', 'fd00::1', 7, 7, 7, 'default/ping:icmp');
  now += 500;
  return { ct, ct6 };
}

function count(q: ConntrackQuery): number {
  const { ct, ct6 } = tables();
  const f = conntrackFilter(q, ct6);
  return new FlowLister(ct, f.pred, Infinity, ct6, f.pred6).next().count;
}

t.test('IPv6 addresses select IPv6 flows on all 128 bits; IPv4 ones IPv4 flows', async (t) => {
  t.equal(count({}), 4);
  t.equal(count({ src: '2001:db8::35' }), 1, 'src: the one flow, not the one with the same fold');
  t.equal(count({ src: '2001:db8:0:35::' }), 1);
  t.equal(count({ src: '2001:0db8:0000:0000:0000:0000:0000:0035' }), 1, 'any RFC 4291 form');
  t.equal(count({ src: '2001:db8::36' }), 0);
  t.equal(count({ dst: 'fd00:10:96::a' }), 1);
  t.equal(count({ dst: 'fd00:10:96::a', protocol: 'tcp' }), 0, 'every filter must hold');
  t.equal(count({ address: 'fd00::1' }), 3, 'address: the reply destination of all three');
  t.equal(count({ address: 'fd00:10:244:2::9' }), 1, 'address: a reply source');
  t.equal(count({ address: '10.64.1.1' }), 1, 'an IPv4 address: the IPv4 flow only');
  t.equal(count({ src: '172.16.1.35' }), 1);
  t.equal(count({ endpoint: 'fd00:10:244:1::7' }), 1, 'endpoint: an IPv6 address alone');
  t.equal(count({ endpoint: '[fd00:10:244:1::7]' }), 1);
  t.equal(count({ endpoint: '[fd00:10:244:1::7]:53' }), 1, 'endpoint: [address]:port');
  t.equal(count({ endpoint: '[fd00:10:244:1::7]:54' }), 0);
  t.equal(count({ endpoint: '[fd00:10:244:2::9]:8080', dport: '80' }), 1);
  t.equal(count({ endpoint: '10.64.1.7:53' }), 1, 'an IPv4 endpoint: the IPv4 flow');
  t.equal(count({ src: '2001:db8::35', endpoint: '10.64.1.7' }), 0, 'addresses of both families: no flow has both');
  t.equal(count({ family: 'ipv6' }), 3);
  t.equal(count({ family: 'ipv4' }), 1);
  t.equal(count({ family: 'ipv4', address: 'fd00::1' }), 0);
  t.equal(count({ protocol: 'icmpv6' }), 1, 'icmpv6: the IPv6 echo flow (kept under 1 in the table)');
  t.equal(count({ protocol: '58' }), 1);
  t.equal(count({ protocol: 'icmp' }), 0, 'icmp is IPv4\'s');
  t.equal(count({ dport: '53' }), 2, 'a port: both families');
  t.equal(count({ service: 'default/web' }), 1);
});

t.test('without the IPv6 table an IPv6 address filter matches nothing (and still checks the text)', async (t) => {
  const { ct } = tables();
  const f = conntrackFilter({ dst: 'fd00:10:96::a' });
  t.equal(f.filtered, true);
  t.equal(new FlowLister(ct, f.pred, Infinity).next().count, 0);
});

t.test('DELETE with an IPv6 filter removes exactly the matching IPv6 flows', async (t) => {
  const { ct, ct6 } = tables();
  const f = conntrackFilter({ endpoint: '[fd00:10:244:2::9]:8080' }, ct6);
  t.equal(await deleteFlowsSliced(ct, f.pred), 0);
  t.equal(await deleteFlowsSliced(ct6, f.pred6), 1);
  t.equal(ct6.size, 2);
  t.equal(ct.size, 1);
  t.notOk(ct6.list().includes('fd00:10:244:2::9'), 'the flow is gone');
  const g = conntrackFilter({ address: 'fd00::1' }, ct6);
  t.equal(await deleteFlowsSliced(ct6, g.pred6), 2);
  t.equal(ct6.size, 0);
});

t.test('a malformed address or endpoint: a 400 naming the field', async (t) => {
  const cases: Array<[ConntrackQuery, string, RegExp]> = [
    [{ src: 'fd00::g' }, 'query.src', /^src: "fd00::g" is not an IPv6 address$/],
    [{ dst: '1.2.3' }, 'query.dst', /^dst: "1\.2\.3" is not an IPv4 or IPv6 address$/],
    [{ address: '2001:db8:::1' }, 'query.address', /^address: .* is not an IPv6 address$/],
    [{ endpoint: '[fd00::7' }, 'query.endpoint', /^endpoint: .*is not an address or address:port/],
    [{ endpoint: '[10.0.0.1]:80' }, 'query.endpoint', /brackets hold an IPv6 address/],
    [{ endpoint: '[fd00::7]:99999' }, 'query.endpoint', /99999 is not a port/],
    [{ endpoint: '[fd00::7]x' }, 'query.endpoint', /is not an address or address:port/],
    [{ endpoint: 'x:y' }, 'query.endpoint', /is not an address or address:port/],
    [{ family: 'ipx' }, 'query.family', /not ipv4 or ipv6/],
  ];
  for (const [q, path, message] of cases) {
    try {
      conntrackFilter(q);
      t.fail(`${JSON.stringify(q)} accepted`);
    } catch (e) {
      t.ok(e instanceof ApiError, JSON.stringify(q));
      const a = e as ApiError;
      t.equal(a.status, 400);
      t.match(a.message, message);
      t.equal(a.errors?.[0].path, path);
    }
  }
});

// a dual-stack service: IPv4 and IPv6 ClusterIPs, an endpoint of each family
const RULES: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { addresses: ['192.168.50.2', 'fd00:50::2'], clusterCIDR: '10.64.0.0/16,fd00:10:64::/56' },
  services: [{
    namespace: 'default', name: 'web', clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00:10:96::a'],
    ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack',
    ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }, { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }],
    endpoints: [{ address: '10.64.1.7' }, { address: 'fd00:10:64:1::7' }],
  }],
};
// UDP 192.168.50.9:40000 > 10.96.0.10:53; UDP [2001:db8::35]:40000 > [fd00:10:96::a]:53 "hello";
// TCP SYN [2001:db8:0:35::]:41000 > [fd00:10:96::a]:80 (same 32-bit fold of the source as the first)
const PACKETS = [
  '4500001c1234400040112b82c0a832090a60000a9c4000350008664d',
  '60000000000d114020010db8000000000000000000000035fd00001000960000000000000000000a9c400035000df3ed68656c6c6f',
  '600000000014064020010db8000000350000000000000000fd00001000960000000000000000000aa028005000000000000000005002ffffe3cb0000',
];

t.test('GET and DELETE /v1/conntrack with IPv6 filters, on flows the pipeline made from packets', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-ct6-'));
  const sock = join(dir, 'api.sock');
  const dp = new Dataplane({ clock: () => 1_000_000 });
  dp.holder.apply(structuredClone(RULES));
  const srv = await startApi(dp, { socket: sock });
  t.teardown(async () => {
    await srv.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const c = new ApiClient({ socket: sock });
  type Stats = { conntrack: { entries: number }; conntrack6: { entries: number; max: number; inserts: number; full: number } | null };
  t.equal((await c.request<Stats>('GET', '/v1/stats')).body.conntrack6, null, 'no IPv6 table before the first IPv6 packet');
  for (const h of PACKETS) {
    const b = new Uint8Array(Buffer.from(h, 'hex'));
    t.equal(dp.pipeline.process(b, 0, b.length, dp.tables!, 1_000_000), V_FORWARD);
  }
  const st = (await c.request<Stats>('GET', '/v1/stats')).body;
  t.equal(st.conntrack.entries, 1, '/v1/stats: the IPv4 table');
  t.match(st.conntrack6, { entries: 2, inserts: 2, full: 0 }, 'and the IPv6 one apart');
  t.ok(st.conntrack6!.max > 0);
  const metrics = (await c.request<string>('GET', '/metrics')).text;
  t.match(metrics, /^tunproxy_conntrack6_entries 2$/m, 'its metrics');
  t.match(metrics, /^tunproxy_conntrack6_inserts_total 2$/m);
  t.match(metrics, /^tunproxy_conntrack_entries 1$/m, 'the IPv4 metric keeps its name and counts IPv4 flows');
  t.match(statsText(st as never), /\nconntrack {4}1\/\d+ entries, 1 inserted, [^\n]*\nconntrack6 {3}2\/\d+ entries, 2 inserted, 0 evicted, 0 expired, 0 collisions, 0 clashes, 0 refused \(full\)\n/, 'tunproxy stats: a line for each table');
  type Flows = { matched: number; flows: Array<{ original: { src: string }; endpoint: string }> };
  const get = async (q: string) => (await c.request<Flows>('GET', `/v1/conntrack?${q}`)).body;
  t.equal((await get('')).matched, 3);
  const one = await get('src=2001:db8::35');
  t.equal(one.matched, 1);
  t.equal(one.flows[0].original.src, '2001:db8::35');
  t.equal(one.flows[0].endpoint, '[fd00:10:64:1::7]:5353');
  t.equal((await get('dst=fd00:10:96::a')).matched, 2);
  t.equal((await get('dst=10.96.0.10')).matched, 1);
  t.equal((await get(`endpoint=${encodeURIComponent('[fd00:10:64:1::7]:8080')}`)).matched, 1);
  t.equal((await get('family=ipv6&protocol=udp')).matched, 1);
  const text = await c.request<string>('GET', '/v1/conntrack?format=text&src=2001:db8:0:35::');
  t.match(text.text, /^tcp {6}6 \d+ SYN_SENT src=2001:db8:0:35:: dst=fd00:10:96::a sport=41000 dport=80 \[UNREPLIED\] src=fd00:10:64:1::7 dst=fd00:50::2 sport=8080 dport=41000 mark=0 use=1\n$/);
  const bad = await c.request<{ error: string; message: string; errors: Array<{ path: string }> }>('GET', '/v1/conntrack?src=fd00::zz');
  t.equal(bad.status, 400);
  t.equal(bad.body.error, 'invalid_request');
  t.match(bad.body.message, /^src: "fd00::zz" is not an IPv6 address/);
  t.equal(bad.body.errors[0].path, 'query.src');
  const badDel = await c.request<{ message: string }>('DELETE', `/v1/conntrack?endpoint=${encodeURIComponent('[fd00::7')}`);
  t.equal(badDel.status, 400);
  t.match(badDel.body.message, /^endpoint:/);
  t.equal(dp.pipeline.conntrackV6!.size, 2, 'nothing deleted by a bad filter');
  t.same((await c.request('DELETE', '/v1/conntrack?src=2001:db8:0:35::')).body, { deleted: 1, entries: 2 });
  t.equal((await get('family=ipv6')).matched, 1);
  t.same((await c.request('DELETE', '/v1/conntrack?address=fd00:50::2')).body, { deleted: 1, entries: 1 }, 'the masquerade address of the reply');
  t.equal((await get('')).matched, 1, 'the IPv4 flow is left');
});
