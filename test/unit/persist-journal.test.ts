import t from 'tap';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateStore } from '../../control/persist.ts';
import { crc32js, crcHex, journalLine, readJournal, replayRecords, serviceChange } from '../../control/persist-journal.ts';
import { crc32 } from 'node:zlib';
import type { RuleSet, Service } from '../../control/types.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;
const HERE = { bootId: 'boot-1', netns: 'net:[4026531840]' };
const keys = (rs: RuleSet): string[] => rs.services.map((s) => `${s.namespace}/${s.name}`);
const svc = (name: string, ip: string): Service => ({ namespace: 'extra', name, clusterIP: ip, ports: [{ name: 'http', protocol: 'TCP', port: 80 }], endpoints: [{ address: '10.64.1.40' }] });

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'tp-journal-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A state store in a directory of its own, ready, closed at the test's end (`compactAfterMs`: when the journal is folded in). */
function openStore(t: { teardown(fn: () => void): void }, compactAfterMs: number): StateStore {
  const s = new StateStore(tmp(t), 'tun0.', HERE, { compactAfterMs });
  s.init();
  t.teardown(() => s.close());
  return s;
}

function loaded(s: StateStore): RuleSet {
  const l = new StateStore(s.dir, 'tun0.', HERE).loadRuleSet();
  if (l.status !== 'ok') throw new Error(`not loaded: ${JSON.stringify(l)}`);
  return l.ruleSet;
}

t.test('serviceChange: the changes the API makes, as records that replay to the same rule set', async (t) => {
  const a = golden;
  const [s0, s1, s2, s3] = a.services;
  const cases: Array<[string, Service[], { up: number; del: number }]> = [
    ['nothing changed', a.services.slice(), { up: 0, del: 0 }],
    ['one replaced in place', [s0, { ...s1 }, ...a.services.slice(2)], { up: 1, del: 0 }],
    ['one appended', [...a.services, svc('new', '10.32.9.1')], { up: 1, del: 0 }],
    ['one deleted in the middle', a.services.filter((s) => s !== s2), { up: 0, del: 1 }],
    ['the last deleted', a.services.slice(0, -1), { up: 0, del: 1 }],
    ['two apart deleted, one replaced, two appended', [s0, { ...s1 }, ...a.services.slice(4), svc('x', '10.32.9.2'), svc('y', '10.32.9.3')].filter((s) => s !== a.services[5]), { up: 3, del: 3 }],
    ['one moved to the end', [s0, s2, s3, ...a.services.slice(4), s1], { up: 1, del: 1 }],
    ['the last replaced by a new one', [...a.services.slice(0, -1), svc('z', '10.32.9.4')], { up: 1, del: 1 }],
  ];
  for (const [what, services, n] of cases) {
    const b = { ...a, services };
    const c = serviceChange(a, b, undefined, false);
    if (c === null) {
      t.fail(`${what}: no record`);
      continue;
    }
    t.same({ up: c.upsert.length, del: c.delete.length }, n, `${what}: ${c.upsert.length} upserted, ${c.delete.length} deleted`);
    const r = replayRecords(a.services, [c]);
    t.equal(r.length, services.length, `${what}: replayed`);
    t.ok(r.every((s, i) => s === services[i]), `${what}: the very services, in order`);
  }
  // the positional form: places that hold another service, the list's new length, when it names fewer services than the key form
  const swapRemoved = [...a.services.slice(0, 2), a.services[7], ...a.services.slice(3, 7)]; // services[2] removed, the last put in its place (the kube agent)
  const positional: Array<[string, Service[], number[]]> = [
    ['the last two cut', a.services.slice(0, -2), []],
    ['one removed, the last put in its place', swapRemoved, [2]],
    ['the one before the last deleted', [...a.services.slice(0, 6), a.services[7]], [6]],
  ];
  for (const [what, services, places] of positional) {
    const c = serviceChange(a, { ...a, services });
    t.same(c && { put: c.put?.map(([i]) => i), length: c.length, upsert: c.upsert.length, delete: c.delete.length }, { put: places, length: services.length, upsert: 0, delete: 0 }, `${what}: positional, at ${places.join(', ') || 'no place'}`);
    const r = c === null ? [] : replayRecords(a.services, [c]);
    t.ok(r.length === services.length && r.every((s, i) => s === services[i]), `${what}: replays to the very services, in order`);
  }
  const k = serviceChange(a, { ...a, services: swapRemoved }, undefined, false);
  t.equal(k && k.upsert.length + k.delete.length, 9, 'the key form of that removal names 9 services (5 deleted, 4 appended again)');
  t.match(serviceChange(a, { ...a, services: [s0, { ...s1 }, ...a.services.slice(2)] }), { upsert: [{ name: 'web-svc' }], delete: [] }, 'a replacement: the key form (as few services, no deletion)');
  t.match(serviceChange(a, { ...a, services: a.services.filter((s) => s !== s2) }), { delete: ['default/nginx'] }, 'a deletion in the middle: the key form, the places after it moved');
  t.equal(serviceChange(a, { ...a, node: { ...a.node, name: 'node-b' } }), null, 'the node changed: not a record');
  // a service inserted before the end: the ones after it deleted and appended again, when that is few enough
  const front = [svc('first', '10.32.9.5'), ...a.services];
  const f = serviceChange(a, { ...a, services: front }, undefined, false);
  t.match(f, { upsert: { length: 9 }, delete: { length: 8 } }, 'inserted first: every service deleted and appended again');
  t.ok(f !== null && replayRecords(a.services, [f]).every((s, i) => s === front[i]), '... which replays to the same order');
  t.equal(serviceChange(a, { ...a, services: front }, 4, false), null, '... and is not a record when that is more than the limit');
  t.equal(serviceChange(a, { ...a, services: front }, 9, true)?.put?.length, 9, 'positional when the limit allows it: every place changed');
  t.equal(serviceChange(a, { ...a, services: a.services.map((s) => ({ ...s })) }, 4), null, 'more changes than the limit: not a record');
  t.equal(serviceChange(a, { ...a, services: a.services.map((s) => ({ ...s })) }, 8)?.upsert.length, 8, 'as many as the limit: a record');
  t.same(serviceChange(a, { ...a, node: { ...a.node } }), { upsert: [], delete: [] }, 'a node equal in value is no change');
});

t.test('CRC-32: the JavaScript one (for node before 20.15) is zlib\'s', async (t) => {
  t.equal(crcHex('123456789'), 'cbf43926', 'the check value of CRC-32/ISO-HDLC');
  t.equal(crc32js(Buffer.from('123456789')), 0xcbf43926);
  const text = JSON.stringify(golden) + ' ünïcödé ✓';
  t.equal(crc32js(Buffer.from(text)), crc32(text) >>> 0, 'the same as zlib on a rule set with non-ASCII text');
  t.equal(crc32js(new Uint8Array(0)), 0);
});

t.test('readJournal: the header must name the file; a torn last line is dropped; a bad line before it is damage', async (t) => {
  const base = JSON.stringify(golden);
  const other = JSON.stringify({ ...golden, services: [] });
  const header = (text: string): string => JSON.stringify({ kind: 'TunproxyRuleSetJournal', version: 1, base: { bytes: Buffer.byteLength(text), crc32: crcHex(text) } }) + '\n';
  const r1 = journalLine({ generation: 2, upsert: [svc('a', '10.32.9.1')], delete: [] });
  const r2 = journalLine({ generation: 3, upsert: [], delete: ['extra/a'] });
  t.match(readJournal(header(base) + r1 + r2, base), { status: 'ok', tornTail: false, damage: null, records: [{ generation: 2 }, { generation: 3 }] });
  t.match(readJournal(header(other) + r1, base), { status: 'stale', records: [] }, 'another file: stale');
  t.match(readJournal(header(base) + r1 + r2.slice(0, 20), base), { status: 'ok', tornTail: true, damage: null, records: [{ generation: 2 }] }, 'the last line cut short');
  const flipped = r1.replace('10.32.9.1', '10.32.9.7');
  t.match(readJournal(header(base) + flipped, base), { status: 'ok', tornTail: true, records: [] }, 'a last line whose CRC does not match: cut short too');
  t.match(readJournal(header(base) + flipped + r2, base), { status: 'ok', tornTail: false, damage: /line 2: its CRC-32 does not match/, records: [] }, 'a bad line before the last: damage');
  t.match(readJournal(header(base) + r2 + r1 + r2, base), { status: 'ok', damage: /line 3: generation 2 does not follow 3/, records: [{ generation: 3 }] }, 'generations must grow');
  t.match(readJournal('{"kind":"x"}\n' + r1, base), { status: 'ok', damage: /not a TunproxyRuleSetJournal header/ });
  t.match(readJournal(header(base).replace('"version":1', '"version":9') + r1, base), { status: 'ok', damage: /version 9 is not supported/ });
});

t.test('a change of a few services is one line appended; a restart reads the file and its journal back', async (t) => {
  const s = openStore(t, 60_000);
  await s.saveRuleSet(golden, 1);
  const file = readFileSync(s.ruleSetPath, 'utf8');
  t.notOk(existsSync(s.journalPath), 'written whole: no journal');
  const g2 = { ...golden, services: [...golden.services, svc('a', '10.32.9.1')] };
  await s.saveRuleSet(g2, 2);
  const g3 = { ...g2, services: g2.services.filter((x) => x.name !== 'web-svc') };
  await s.saveRuleSet(g3, 3);
  const g4 = { ...g3, services: g3.services.map((x) => (x.name === 'a' ? { ...x, endpoints: [] } : x)) };
  await s.saveRuleSet(g4, 4);
  t.equal(readFileSync(s.ruleSetPath, 'utf8'), file, 'the file is not written again');
  t.equal(s.appends, 3);
  t.equal(s.journalRecords, 3);
  const lines = readFileSync(s.journalPath, 'utf8').split('\n');
  t.equal(lines.length, 5, 'a header, three records, the final newline');
  t.match(JSON.parse(lines[1].slice(9)), { generation: 2, upsert: [{ name: 'a' }], delete: [] });
  t.match(JSON.parse(lines[2].slice(9)), { generation: 3, upsert: [], delete: ['default/web-svc'] });
  t.same(loaded(s), g4, 'the rule set in force, read back');
  t.same(keys(loaded(s)), keys(g4), 'in its order');
  t.equal(new StateStore(s.dir, 'tun0.', HERE).loadGeneration(), 4, 'the generation goes on from the last record');
  const l = new StateStore(s.dir, 'tun0.', HERE).loadRuleSet();
  t.match(l, { status: 'ok', journal: { records: 3, note: null } });
  // a change of the node cannot be a record: written whole, the journal removed
  const g5 = { ...g4, node: { ...g4.node, name: 'node-b' } };
  await s.saveRuleSet(g5, 5);
  t.notOk(existsSync(s.journalPath), 'the journal is gone');
  t.same(JSON.parse(readFileSync(s.ruleSetPath, 'utf8')), g5);
  t.equal(s.journalRecords, 0);
});

t.test('the journal is folded into the file once no change came for a while, and when it outgrows half the file', async (t) => {
  const s = openStore(t, 50);
  await s.saveRuleSet(golden, 1);
  const g2 = { ...golden, services: [...golden.services, svc('a', '10.32.9.1')] };
  await s.saveRuleSet(g2, 2);
  t.ok(existsSync(s.journalPath));
  for (let i = 0; i < 100 && existsSync(s.journalPath); i++) await new Promise((r) => setTimeout(r, 20));
  await s.flush();
  t.notOk(existsSync(s.journalPath), 'folded in: no journal');
  t.same(JSON.parse(readFileSync(s.ruleSetPath, 'utf8')), g2, 'the file is the rule set in force');
  t.equal(s.savedGeneration, 2);
  t.equal(readFileSync(join(s.dir, 'tun0.generation'), 'utf8'), '2\n');

  const big = openStore(t, 60_000);
  let rs: RuleSet = golden;
  await big.saveRuleSet(rs, 1);
  // each record ~2.6 KB: past 64 KiB (the file is smaller) the next change writes the file whole
  const eps = Array.from({ length: 60 }, (_, i) => ({ address: `10.64.2.${i + 1}` }));
  let whole = -1;
  for (let g = 2; g < 60 && whole < 0; g++) {
    rs = { ...rs, services: [...rs.services.slice(0, -1), { ...svc('b', '10.32.9.9'), endpoints: eps.slice(0, 59 + (g % 2)) }] };
    if (g === 2) rs = { ...golden, services: [...golden.services, rs.services[rs.services.length - 1]] };
    await big.saveRuleSet(rs, g);
    if (big.journalRecords === 0) whole = g;
  }
  t.ok(whole > 20, `written whole again at generation ${whole}, the journal past 64 KiB`);
  t.same(loaded(big), rs);
});

t.test('what a crash leaves: a torn last line is left out, damage is set aside, a journal of an older file is ignored', async (t) => {
  const s = openStore(t, 60_000);
  await s.saveRuleSet(golden, 1);
  const g2 = { ...golden, services: [...golden.services, svc('a', '10.32.9.1')] };
  const g3 = { ...g2, services: [...g2.services, svc('b', '10.32.9.2')] };
  await s.saveRuleSet(g2, 2);
  await s.saveRuleSet(g3, 3);
  const journal = readFileSync(s.journalPath, 'utf8');

  // an append cut short by a crash (never answered)
  appendFileSync(s.journalPath, journalLine({ generation: 4, upsert: [svc('c', '10.32.9.3')], delete: [] }).slice(0, 30));
  let l = new StateStore(s.dir, 'tun0.', HERE).loadRuleSet();
  t.match(l, { status: 'ok', journal: { records: 2, note: /last change was cut short/ } });
  if (l.status === 'ok') t.same(l.ruleSet, g3);

  // a record before the last damaged: the records before it, the journal set aside
  const lines = journal.split('\n');
  writeFileSync(s.journalPath, [lines[0], lines[1], lines[2].replace('10.32.9.2', '10.32.9.8'), journalLine({ generation: 4, upsert: [], delete: [] })].join('\n'));
  l = new StateStore(s.dir, 'tun0.', HERE).loadRuleSet();
  t.match(l, { status: 'ok', journal: { records: 1, note: /is damaged \(line 3: its CRC-32 does not match\): the 1 change before it loaded, moved to .*damaged-/ } });
  if (l.status === 'ok') t.same(l.ruleSet, g2);
  t.notOk(existsSync(s.journalPath), 'set aside');
  t.ok(readdirSync(s.dir).some((f) => f.startsWith('tun0.ruleset.journal.damaged-')));

  // a journal whose header names another file (a crash between writing the file whole and removing it)
  writeFileSync(s.journalPath, journal);
  writeFileSync(s.ruleSetPath, JSON.stringify(g3));
  l = new StateStore(s.dir, 'tun0.', HERE).loadRuleSet();
  t.match(l, { status: 'ok', journal: { records: 0, note: null } });
  if (l.status === 'ok') t.same(l.ruleSet, g3, 'the file alone');
  t.notOk(existsSync(s.journalPath), 'the stale journal is removed');

  // records that do not make a valid rule set (two services on one ClusterIP): the file alone, the journal set aside
  const s2 = openStore(t, 60_000);
  await s2.saveRuleSet(golden, 1);
  await s2.saveRuleSet({ ...golden, services: [...golden.services, svc('a', '10.32.9.1')] }, 2);
  const text = readFileSync(s2.journalPath, 'utf8');
  const dup = journalLine({ generation: 3, upsert: [svc('b', '10.32.9.1')], delete: [] });
  writeFileSync(s2.journalPath, text + dup);
  l = new StateStore(s2.dir, 'tun0.', HERE).loadRuleSet();
  t.match(l, { status: 'ok', journal: { records: 0, note: /its changes do not make a valid rule set .*the file alone is loaded; moved to/ } });
  if (l.status === 'ok') t.same(l.ruleSet, golden);
});

t.test('a failed append: the next save writes the whole rule set', async (t) => {
  const dir = tmp(t);
  const s = new StateStore(dir, 'tun0.', HERE, { compactAfterMs: 60_000 });
  s.init();
  t.teardown(() => s.close());
  await s.saveRuleSet(golden, 1);
  rmSync(dir, { recursive: true });
  await t.rejects(s.saveRuleSet({ ...golden, services: golden.services.slice(1) }, 2), /cannot save the rule set/);
  s.init();
  const g3 = { ...golden, services: golden.services.slice(2) };
  await s.saveRuleSet(g3, 3);
  t.same(JSON.parse(readFileSync(s.ruleSetPath, 'utf8')), g3, 'whole: the file is the rule set');
  t.ok(statSync(s.ruleSetPath).isFile());
});

t.test("the kube agent's removal (the last service takes the removed one's place) is one positional line, not the whole rule set", async (t) => {
  const s = openStore(t, 60_000);
  const many = { ...golden, services: [...golden.services, ...Array.from({ length: 40 }, (_, i) => svc(`k${i}`, `10.32.10.${i + 1}`))] };
  await s.saveRuleSet(many, 1);
  const next = many.services.slice();
  const last = next.pop()!;
  next[10] = last; // extra/k2 removed
  const g2 = { ...many, services: next };
  await s.saveRuleSet(g2, 2);
  t.equal(s.appends, 1);
  const line = readFileSync(s.journalPath, 'utf8').split('\n')[1];
  t.match(JSON.parse(line.slice(9)), { generation: 2, upsert: [], delete: [], put: [[10, { name: 'k39' }]], length: 47 });
  t.ok(line.length < 600, `one service in the line (${line.length} bytes)`);
  t.same(keys(loaded(s)), keys(g2), 'read back in the same order');
  // after a deletion by key, places would count holes: no positional line
  const g3 = { ...g2, services: g2.services.filter((x) => x.name !== 'k5') };
  await s.saveRuleSet(g3, 3);
  t.equal(s.appends, 2, 'the deletion in the middle: a line by key');
  const next4 = g3.services.slice();
  next4[3] = next4.pop()!;
  await s.saveRuleSet({ ...g3, services: next4 }, 4);
  const l4 = JSON.parse(readFileSync(s.journalPath, 'utf8').split('\n')[3].slice(9));
  t.ok(l4.put === undefined && l4.delete.length === 43 && l4.upsert.length === 42, 'then a removal by the last one: by key, every service after the place deleted and appended again');
  t.same(keys(loaded(s)), keys({ ...g3, services: next4 }), 'read back in the same order');
  // ... which at the scale of a cluster is more than a line may name: written whole
  const big = { ...golden, services: Array.from({ length: 3000 }, (_, i) => svc(`b${i}`, `10.33.${i >> 8}.${i & 255}`)) };
  await s.saveRuleSet(big, 5);
  const b6 = big.services.filter((x) => x.name !== 'b7');
  await s.saveRuleSet({ ...big, services: b6 }, 6);
  const b7 = b6.slice();
  b7[100] = b7.pop()!;
  const appends = s.appends;
  await s.saveRuleSet({ ...big, services: b7 }, 7);
  t.equal(s.appends, appends, 'a removal by the last one after a deletion by key, in 3 000 services: written whole');
  t.equal(s.journalRecords, 0);
  t.same(keys(loaded(s)), keys({ ...big, services: b7 }));
});
