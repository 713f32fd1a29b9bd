/**
 * The SIGTERM save of the connection table with its IPv6 part: items6 beside
 * items, aged the same way, restored into the IPv6 table; a file without it
 * (an older tunproxy's) has no IPv6 flows; a damaged IPv6 part is refused
 * whole and reported while the IPv4 part is restored.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restoreConntrackParts, StateStore, type LoadedConntrack } from '../../control/persist.ts';
import { parseIPv4, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { Conntrack, CT_DIR_ORIGINAL, CT_DIR_REPLY } from '../../dataplane/conntrack.ts';
import { Conntrack6, CT6_ORIG_DST, CT6_ORIG_SRC, CT6_REPLY_DST, CT6_REPLY_SRC } from '../../dataplane/conntrack6.ts';

const HERE = { bootId: 'boot-1', netns: 'net:[4026531840]' };
const CLIENT6 = 'fd00:172:16:6::2';
const VIP6 = 'fd00:10:32:6::a';
const POD6 = 'fd00:10:64:6::13';
const MASQ6 = 'fd00:10:64:6::1';

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'tp-persist6-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function tuple(os: string, od: string, rs: string, rd: string): Uint32Array {
  const w = new Uint32Array(16);
  w.set(parseIPv6(os)!, CT6_ORIG_SRC);
  w.set(parseIPv6(od)!, CT6_ORIG_DST);
  w.set(parseIPv6(rs)!, CT6_REPLY_SRC);
  w.set(parseIPv6(rd)!, CT6_REPLY_DST);
  return w;
}

/** one established masqueraded TCP flow and one UDP flow in IPv6, one TCP flow in IPv4, at time 1000 */
function tables() {
  const now = 1000;
  const ct6 = new Conntrack6({ clock: () => now });
  const tcp = ct6.insert6(PROTO_TCP, tuple(CLIENT6, VIP6, POD6, MASQ6), 41000, 80, 8080, 61000, now, { serviceName: 'default/web:http', serviceIndex: 0, masquerade: true })!;
  ct6.update(tcp, CT_DIR_ORIGINAL, 0x02, 80, now);
  ct6.update(tcp, CT_DIR_REPLY, 0x12, 80, now);
  ct6.update(tcp, CT_DIR_ORIGINAL, 0x10, 72, now);
  const udp = ct6.insert6(PROTO_UDP, tuple(CLIENT6, VIP6, POD6, MASQ6), 5353, 7000, 7000, 5353, now, { serviceName: 'default/web:echo', serviceIndex: 0, masquerade: true })!;
  ct6.update(udp, CT_DIR_ORIGINAL, 0, 60, now); // UDP: 30 s
  const ct = new Conntrack({ clock: () => now });
  const ip = parseIPv4;
  const e = ct.insert(PROTO_TCP, ip('172.16.6.2'), ip('10.32.6.10'), 42000, 80, ip('10.64.6.13'), ip('10.64.6.1'), 8080, 42000, now, {
    serviceName: 'default/web:http', serviceIndex: 0, endpointAddr: ip('10.64.6.13'), endpointPort: 8080, masquerade: true,
  })!;
  ct.update(e, CT_DIR_ORIGINAL, 0x02, 60, now);
  return { ct, ct6, tcp };
}

t.test('the IPv6 flows are saved beside the IPv4 ones and restored into the IPv6 table, aged by the time between', async (t) => {
  const { ct, ct6, tcp } = tables();
  const s = new StateStore(tmp(t), 'tun0.', HERE);
  s.init();
  s.saveConntrack(ct.snapshot(1000), 50_000, ct6.snapshot(1000));
  const doc = JSON.parse(readFileSync(s.conntrackPath, 'utf8'));
  t.equal(doc.items.length, 1);
  t.equal(doc.items6.length, 2);
  t.equal(doc.items6[0].origSrc, CLIENT6, 'IPv6 addresses as text');
  const l = s.loadConntrack(50_000 + 40_000); // 40 s later: the UDP flow (30 s) ran out
  t.equal(l.status, 'ok');
  if (l.status !== 'ok') return;
  t.equal(l.items.length, 1);
  t.equal(l.items6.length, 1);
  t.equal(l.expired6, 1);
  t.equal(l.damaged6, null);
  const now = 7_000; // the new process's clock
  const ct2 = new Conntrack({ clock: () => now });
  let made = 0;
  const ct62 = new Conntrack6({ clock: () => now });
  const r = restoreConntrackParts(l, ct2, () => {
    made++;
    return ct62;
  });
  t.same(r, { ipv4: 1, ipv6: 1, damaged: [] });
  t.equal(made, 1);
  const p = new Uint32Array(8);
  p.set(parseIPv6(POD6)!, 0);
  p.set(parseIPv6(MASQ6)!, 4);
  const e = ct62.lookup6(PROTO_TCP, p, 0, 4, 8080, 61000, now);
  t.ok(e, 'the reply direction of the IPv6 connection is found');
  t.equal(e!.state, tcp.state, 'ESTABLISHED');
  t.ok(e!.masquerade);
  t.equal(Math.round(e!.expires - now), Math.round(tcp.expires - 1000 - 40_000), 'lifetime moved on by the 40 s in between');
});

t.test('a file of an older tunproxy (no items6) has no IPv6 flows; the IPv6 table is not even made', async (t) => {
  const { ct } = tables();
  const s = new StateStore(tmp(t), '', HERE);
  writeFileSync(s.conntrackPath, JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1000, ...HERE, items: ct.snapshot(1000) }));
  const l = s.loadConntrack(2000);
  t.equal(l.status, 'ok');
  if (l.status !== 'ok') return;
  t.same([l.items6, l.expired6, l.damaged6], [[], 0, null]);
  const r = restoreConntrackParts(l, new Conntrack(), () => {
    throw new Error('the IPv6 table must not be made for no flow');
  });
  t.same(r, { ipv4: 1, ipv6: 0, damaged: [] });
});

t.test('a damaged IPv6 part is refused whole and reported; the IPv4 part is still restored', async (t) => {
  const { ct, ct6 } = tables();
  const s = new StateStore(tmp(t), '', HERE);
  const items6 = ct6.snapshot(1000);
  // an IPv4 address where an IPv6 one belongs, in the second item
  writeFileSync(s.conntrackPath, JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1000, ...HERE, items: ct.snapshot(1000), items6: [items6[0], { ...items6[1], replySrc: '10.64.6.13' }] }));
  let l = s.loadConntrack(1000) as Extract<LoadedConntrack, { status: 'ok' }>;
  t.equal(l.status, 'ok');
  const ct62 = new Conntrack6();
  let r = restoreConntrackParts(l, new Conntrack(), () => ct62);
  t.equal(r.ipv4, 1);
  t.equal(r.ipv6, null);
  t.same(r.damaged.map((d) => d.family), ['IPv6']);
  t.match(r.damaged[0].reason, /item 1: replySrc must be an IPv6 address, got "10\.64\.6\.13"/);
  t.equal(ct62.size, 0, 'nothing of the damaged part was loaded');

  // items6 that is not a list at all
  writeFileSync(s.conntrackPath, JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1000, ...HERE, items: ct.snapshot(1000), items6: { flows: 2 } }));
  l = s.loadConntrack(1000) as Extract<LoadedConntrack, { status: 'ok' }>;
  t.equal(l.status, 'ok');
  t.equal(l.damaged6, 'items6 must be an array of flows');
  r = restoreConntrackParts(l, new Conntrack(), () => new Conntrack6());
  t.same(r, { ipv4: 1, ipv6: null, damaged: [{ family: 'IPv6', reason: 'items6 must be an array of flows' }] });
  // the IPv4 part damaged, the IPv6 part whole: the reverse
  writeFileSync(s.conntrackPath, JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1000, ...HERE, items: [{ proto: 6 }], items6 }));
  l = s.loadConntrack(1000) as Extract<LoadedConntrack, { status: 'ok' }>;
  r = restoreConntrackParts(l, new Conntrack(), () => new Conntrack6());
  t.equal(r.ipv4, null);
  t.equal(r.ipv6, 2);
  t.same(r.damaged.map((d) => d.family), ['IPv4']);
});

t.test('a part superseded by a pinned table is left out', async (t) => {
  const { ct, ct6 } = tables();
  const s = new StateStore(tmp(t), '', HERE);
  s.saveConntrack(ct.snapshot(1000), 1000, ct6.snapshot(1000));
  const l = s.loadConntrack(1000) as Extract<LoadedConntrack, { status: 'ok' }>;
  const only4 = new Conntrack();
  t.same(restoreConntrackParts(l, only4, null), { ipv4: 1, ipv6: null, damaged: [] });
  const only6 = new Conntrack6();
  t.same(restoreConntrackParts(l, null, () => only6), { ipv4: null, ipv6: 2, damaged: [] });
  t.equal(only6.size, 2);
});
