import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateStore, writeFileAtomicSync, writeFileAtomic, setAside } from '../../control/persist.ts';
import type { RuleSet } from '../../control/types.ts';
import { Conntrack, CT_DIR_ORIGINAL, CT_DIR_REPLY } from '../../dataplane/conntrack.ts';
import { parseIPv4, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const HERE = { bootId: 'boot-1', netns: 'net:[4026531840]' };

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'tp-persist-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

const withServices = (n: number): RuleSet => ({ ...golden, services: golden.services.slice(0, n) });

t.test('the rule set is written atomically, 0600, and read back', async (t) => {
  const dir = join(tmp(t), 'state'); // created by init
  const s = new StateStore(dir, 'tun0.', HERE);
  s.init();
  t.equal(statSync(dir).mode & 0o777, 0o700, 'the directory is 0700');
  t.same(s.loadRuleSet(), { status: 'none', path: join(dir, 'tun0.ruleset.json') });
  await s.saveRuleSet(golden, 1);
  t.equal(s.savedGeneration, 1);
  t.equal(statSync(s.ruleSetPath).mode & 0o777, 0o600, 'the file is 0600');
  t.same(JSON.parse(readFileSync(s.ruleSetPath, 'utf8')), golden, 'plain rule-set JSON');
  const l = s.loadRuleSet();
  t.equal(l.status, 'ok');
  if (l.status === 'ok') t.same(l.ruleSet, golden);
  t.same(readdirSync(dir).sort(), ['tun0.generation', 'tun0.ruleset.json'], 'no temporary file left behind (the generation is kept beside the rule set)');
});

t.test('saves queued while one is written are coalesced: the newest is on disk, every waiter resolves', async (t) => {
  const s = new StateStore(tmp(t), '', HERE);
  s.init();
  const ps = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => s.saveRuleSet(withServices(n), n));
  // the same generation queued again (a swap listener and the API both save it) is not written twice
  ps.push(s.saveRuleSet(withServices(8), 8));
  await Promise.all(ps);
  t.equal(s.savedGeneration, 8);
  t.ok(s.saves <= 3, `${s.saves} writes for 9 saves`);
  const services = (): number => {
    const l = s.loadRuleSet();
    return l.status === 'ok' ? l.ruleSet.services.length : -1;
  };
  t.equal(services(), 8, 'the newest generation is the one on disk (the file and its journal)');
  await s.saveRuleSet(withServices(1), 3);
  t.equal(services(), 8, 'an older generation is not written over a newer one');
  await s.close();
});

t.test('a failed save rejects its waiters, keeps the old file, and the next save succeeds', async (t) => {
  const dir = tmp(t);
  const s = new StateStore(dir, '', HERE);
  s.init();
  await s.saveRuleSet(withServices(2), 1);
  rmSync(dir, { recursive: true });
  await t.rejects(s.saveRuleSet(withServices(3), 2), /cannot save the rule set to .*ENOENT/);
  t.match(s.lastError?.message, /ENOENT/);
  s.init();
  await s.saveRuleSet(withServices(4), 3);
  t.equal(s.lastError, null);
  t.equal(JSON.parse(readFileSync(s.ruleSetPath, 'utf8')).services.length, 4);
});

t.test('atomic writes: the target is replaced whole or not at all', async (t) => {
  const dir = tmp(t);
  const p = join(dir, 'f.json');
  writeFileSync(p, 'old');
  writeFileAtomicSync(p, 'new contents');
  t.equal(readFileSync(p, 'utf8'), 'new contents');
  await writeFileAtomic(p, new TextEncoder().encode('bytes'));
  t.equal(readFileSync(p, 'utf8'), 'bytes');
  t.throws(() => writeFileAtomicSync(join(dir, 'missing', 'f.json'), 'x'), /ENOENT/);
  t.same(readdirSync(dir), ['f.json'], 'no temporary files');
});

t.test('a damaged state file is set aside, reported, never thrown, never overwritten', async (t) => {
  const dir = tmp(t);
  const s = new StateStore(dir, 'tun0.', HERE);
  s.init();
  const cases: Array<[string, RegExp]> = [
    ['{"apiVersion": "tunproxy.dev/v1", "node": {"addresses": ["10.0', /not valid JSON .*truncated/],
    ['', /empty/],
    [JSON.stringify({ ...golden, services: [{ namespace: 'a', name: 'b', ports: [{ name: '', protocol: 'TCP', port: 99999 }] }] }), /not a valid rule set \(1 error: services\[0\]\.ports\[0\]\.port: 99999 is outside 1-65535\)/],
  ];
  const moved: string[] = [];
  for (const [text, reason] of cases) {
    writeFileSync(s.ruleSetPath, text);
    const l = s.loadRuleSet();
    t.equal(l.status, 'damaged');
    if (l.status !== 'damaged') continue;
    t.match(l.reason, reason);
    t.match(l.movedTo, /tun0\.ruleset\.json\.damaged-\d{4}-\d\d-\d\dT/);
    t.notOk(existsSync(s.ruleSetPath), 'the damaged file is no longer where the next save goes');
    t.equal(readFileSync(l.movedTo, 'utf8'), text, 'kept as it was');
    moved.push(l.movedTo);
  }
  t.equal(new Set(moved).size, 3, 'each under its own name');
  await s.saveRuleSet(golden, 1);
  for (const [i, m] of moved.entries()) t.equal(readFileSync(m, 'utf8'), cases[i][0], 'a later save leaves the damaged copies alone');
  writeFileSync(join(dir, 'x'), '1');
  const a = setAside(join(dir, 'x'), new Date(0));
  writeFileSync(join(dir, 'x'), '2');
  const b = setAside(join(dir, 'x'), new Date(0));
  t.not(a, b, 'the same second twice: two names');
});

t.test('the state directory must be a directory', async (t) => {
  const dir = tmp(t);
  writeFileSync(join(dir, 'file'), '');
  t.throws(() => new StateStore(join(dir, 'file')).init(), /--state-dir .*file: (cannot create it|not a directory)/);
});

function flow(ct: Conntrack, proto: number, src: string, sport: number, vip: string, ep: string, epPort: number, masq: string | null, now: number) {
  const replyDst = masq ? parseIPv4(masq) : parseIPv4(src);
  const replyDport = masq ? 40000 + sport % 1000 : sport;
  const e = ct.insert(proto, parseIPv4(src), parseIPv4(vip), sport, 80, parseIPv4(ep), replyDst, epPort, replyDport, now, {
    serviceName: 'default/web:http',
    serviceIndex: 0,
    endpointAddr: parseIPv4(ep),
    endpointPort: epPort,
    masquerade: masq !== null,
  })!;
  return e;
}

t.test('the connection table survives a save and a restore, lifetimes moved on by the time in between', async (t) => {
  let now = 1_000;
  const ct = new Conntrack({ clock: () => now, seed: 1 });
  const tcp = flow(ct, PROTO_TCP, '192.168.77.2', 41000, '10.96.0.10', '10.64.1.13', 8080, '10.64.1.1', now);
  ct.update(tcp, CT_DIR_ORIGINAL, 0x02, 60, now); // SYN
  ct.update(tcp, CT_DIR_REPLY, 0x12, 60, now); // SYN/ACK
  ct.update(tcp, CT_DIR_ORIGINAL, 0x10, 52, now); // ACK: ESTABLISHED
  const udp = flow(ct, PROTO_UDP, '10.64.1.20', 5353, '10.96.0.10', '10.64.1.14', 53, null, now);
  ct.update(udp, CT_DIR_ORIGINAL, 0, 70, now); // UDP: 30 s
  const dir = tmp(t);
  const s = new StateStore(dir, 'tun0.', HERE);
  s.init();
  s.saveConntrack(ct.snapshot(now), 50_000);
  t.equal(statSync(s.conntrackPath).mode & 0o777, 0o600);

  const l = s.loadConntrack(50_000 + 40_000); // 40 s later: the UDP flow (30 s) ran out
  t.equal(l.status, 'ok');
  if (l.status !== 'ok') return;
  t.equal(l.expired, 1);
  t.equal(l.items.length, 1);
  t.equal(l.elapsedMs, 40_000);
  now = 7_000; // the new process's clock
  const ct2 = new Conntrack({ clock: () => now });
  t.equal(ct2.restore(l.items, now), 1);
  s.consumeConntrack();
  t.notOk(existsSync(s.conntrackPath), 'consumed: a later start does not restore it again');
  // a packet of the established connection, each direction, finds its flow with the same translation
  const e = ct2.lookup(PROTO_TCP, parseIPv4('192.168.77.2'), parseIPv4('10.96.0.10'), 41000, 80, now)!;
  t.ok(e, 'the original direction is found');
  t.equal(e.state, tcp.state, 'ESTABLISHED');
  t.equal(e.replyDport, tcp.replyDport, 'the same masquerade port');
  t.equal(Math.round(e.expires - now), Math.round(tcp.expires - 1_000 - 40_000), 'lifetime moved on by the 40 s in between');
  const r = ct2.lookup(PROTO_TCP, parseIPv4('10.64.1.13'), parseIPv4('10.64.1.1'), 8080, tcp.replyDport, now);
  t.equal(r, e, 'the reply direction finds the same flow');
});

t.test('a connection table from another boot or namespace is not restored and left in place', async (t) => {
  const dir = tmp(t);
  new StateStore(dir, '', HERE).saveConntrack([], 1000);
  const otherNs = new StateStore(dir, '', { ...HERE, netns: 'net:[4026532000]' }).loadConntrack(2000);
  t.equal(otherNs.status, 'foreign');
  if (otherNs.status === 'foreign') t.match(otherNs.reason, /another network namespace/);
  const otherBoot = new StateStore(dir, '', { ...HERE, bootId: 'boot-2' }).loadConntrack(2000);
  t.equal(otherBoot.status, 'foreign');
  if (otherBoot.status === 'foreign') t.match(otherBoot.reason, /before the last reboot/);
  t.ok(existsSync(join(dir, 'conntrack.json')), 'left for its owner');
});

t.test('a damaged connection table is set aside', async (t) => {
  const dir = tmp(t);
  const s = new StateStore(dir, '', HERE);
  for (const [text, reason] of [
    ['{"kind":"TunproxyConntrack","version":1,"savedAt":1,"items":[', /not valid JSON/],
    ['{"kind":"Other"}', /not a tunproxy connection table/],
    [JSON.stringify({ kind: 'TunproxyConntrack', version: 2, savedAt: 1, items: [] }), /version 2 is not supported/],
    [JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1, ...HERE, items: {} }), /items must be an array/],
  ] as Array<[string, RegExp]>) {
    writeFileSync(s.conntrackPath, text);
    const l = s.loadConntrack(10);
    t.equal(l.status, 'damaged');
    if (l.status === 'damaged') {
      t.match(l.reason, reason);
      t.equal(readFileSync(l.movedTo, 'utf8'), text);
    }
  }
  // items that restore() refuses: the caller sets the file aside
  writeFileSync(s.conntrackPath, JSON.stringify({ kind: 'TunproxyConntrack', version: 1, savedAt: 1, ...HERE, items: [{ proto: 6, remainingMs: 1e6, ageMs: 0, origSrc: 'x' }] }));
  const l = s.loadConntrack(10);
  t.equal(l.status, 'ok');
  if (l.status === 'ok') t.throws(() => new Conntrack().restore(l.items), /item 0/);
  const moved = s.setAsideConntrack();
  t.ok(existsSync(moved));
  t.notOk(existsSync(s.conntrackPath));
});

t.test('the saved generation is kept beside the rule set, and a holder goes on counting from it', async (t) => {
  const { StateStore } = await import('../../control/persist.ts');
  const { RuleSetHolder } = await import('../../control/runtime.ts');
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'tp-gen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const rs = { apiVersion: 'tunproxy.dev/v1', node: { addresses: ['192.0.2.1'] }, services: [] };
  const st = new StateStore(dir, 'tun9.');
  st.init();
  t.equal(st.loadGeneration(), 0, 'nothing saved yet');
  await st.saveRuleSet(rs, 7);
  t.equal(st.loadGeneration(), 7);
  const h = new RuleSetHolder();
  h.resumeGeneration(st.loadGeneration());
  t.equal(h.apply(rs).generation, 8, 'the first rule set after a restart is generation 8, not 1');
  h.resumeGeneration(100);
  t.equal(h.generation, 8, 'no effect once a rule set is in force');
  writeFileSync(st.generationPath, 'garbage\n');
  t.equal(st.loadGeneration(), 0, 'a damaged file counts as none');
});
