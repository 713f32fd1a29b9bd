/**
 * CI smoke of `npm run bench:e2e`: the whole harness at 100 services, about a
 * second per cell, all four modes, into a temporary directory — every cell
 * present and measured, numbers sane, the files written; a load past the cap
 * is killed and marked, and the larger sizes of that mode are skipped.
 * The IPv6 run (--family ipv6) likewise at 100 services: the ceiling and the
 * kernel modes (ip6tables-legacy, nftables) answer through real namespaces;
 * tunproxy's cells either answer or are failed with "no answers", never a number.
 */
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODES, MODES6, ALL_MODES, bars, benchEndpoints, benchRuleSet, extraService, familiesOf, ip6Rules, kernelAdd, kernelLoad, modesOf, nft6Rules, partialRestoreText, runE2e } from '../../bench/e2e.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { syntheticRuleSet } from '../../bench/gen.ts';
import { cidr6Contains, parseCidr6, parseIPv6 } from '../../dataplane/addr6.ts';
import type { E2eReport } from '../../bench/e2e.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { netnsUnavailableReason } from '../../scripts/ns.ts';

t.test('partial restore after adding one service: top-level chains and the new chains only', async (t) => {
  const rs = benchRuleSet(50, 2);
  const extra = extraService(50, 2);
  const before = writeIptables(rs);
  const text = partialRestoreText(before, writeIptables({ ...rs, services: [...rs.services, extra] }, { withHooks: false }));
  const lines = text.trimEnd().split('\n');
  t.equal(lines[0], '*filter');
  t.ok(lines.includes(':KUBE-SERVICES - [0:0]'), 'KUBE-SERVICES rewritten (flushed by its declaration)');
  t.equal(lines.filter((l) => l.startsWith('-A KUBE-SERVICES') && l.includes('cluster IP')).length, 53, 'KUBE-SERVICES holds every service port: 50 UDP + 2 TCP + the new one');
  t.ok(lines.some((l) => l.includes(extra.clusterIP!)), 'the new ClusterIP is there');
  const svcChains = lines.filter((l) => /^:KUBE-(SVC|SEP)-/.test(l));
  t.equal(svcChains.length, 3, 'the new service\'s SVC chain and its 2 SEP chains, no other');
  t.notOk(lines.some((l) => /^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) /.test(l)), 'built-in chains untouched');
});

t.test('IPv6 rule sets: single-stack IPv6 services from the /108 service CIDR, IPv6 endpoints, valid', async (t) => {
  const rs = benchRuleSet(50, 2, 'ipv6');
  const v = validateRuleSet(rs);
  t.ok(v.ok, `valid: ${JSON.stringify((v as { errors?: unknown }).errors ?? '').slice(0, 300)}`);
  const cidr = parseCidr6('fd00:10:96::/108')!;
  t.equal(rs.services[0].clusterIP, 'fd00:10:96::a');
  t.equal(rs.services[49].clusterIP, 'fd00:10:96::3b');
  t.ok(rs.services.every((s) => s.ipFamilies?.join() === 'IPv6' && s.clusterIPs?.[0] === s.clusterIP && cidr6Contains(cidr, parseIPv6(s.clusterIP!)!)), 'ipFamilies ["IPv6"], clusterIPs[0] = clusterIP, in the /108');
  t.same(benchEndpoints(2, 'ipv6'), ['fd00:10:64::a', 'fd00:10:64::b']);
  t.same(rs.services[7].endpoints!.map((e) => e.address), ['fd00:10:64::a', 'fd00:10:64::b']);
  t.same(rs.services[0].ports.map((p) => p.protocol), ['UDP', 'TCP'], 'the first service has the TCP port too');
  t.equal(extraService(50, 2, 'ipv6').clusterIP, 'fd00:10:96::3c');
  // the IPv4 rule sets did not change
  t.same(benchRuleSet(3, 2), benchRuleSet(3, 2, 'ipv4'));
  t.equal(benchRuleSet(3, 2).services[0].ipFamilies, undefined);
  t.equal(benchRuleSet(3, 2).node.clusterCIDR, '10.64.0.0/10');
  // dual-stack: both ClusterIPs, both families' endpoints
  const dual = syntheticRuleSet(3, { family: 'dual', endpoints: 2, pods: 2 });
  t.ok(validateRuleSet(dual).ok, 'the dual-stack set is valid');
  t.same(dual.services[1].clusterIPs, ['10.96.0.11', 'fd00:10:96::b']);
});

t.test('the kernel modes\' IPv6 rules come from kube-proxy\'s writers (ip6tables-restore input, table ip6)', async (t) => {
  const rs = benchRuleSet(20, 2, 'ipv6');
  const ipt = kernelLoad('ip6tables-legacy', 'ipv6', rs, '/x');
  t.same(ipt.argv, ['ip6tables-legacy-restore', '/x']);
  t.equal(ipt.text, ip6Rules(rs));
  t.match(ipt.text, /-A KUBE-SERVICES .* -d fd00:10:96::1d --dport 53 -j KUBE-SVC-/, 'the last ClusterIP');
  t.match(ipt.text, /-j DNAT --to-destination \[fd00:10:64::b\]:5353/);
  t.notMatch(ipt.text, /10\.96\./, 'no IPv4 service');
  const nft = kernelLoad('nftables', 'ipv6', rs, '/x');
  t.same(nft.argv, ['nft', '-f', '/x']);
  t.equal(nft.text, nft6Rules(rs));
  t.match(nft.text, /add table ip6 kube-proxy/);
  t.match(nft.text, /fd00:10:96::1d/);
  const extra = extraService(20, 2, 'ipv6');
  const add = kernelAdd('ip6tables-legacy', 'ipv6', rs, extra);
  t.same(add.argv, ['ip6tables-legacy-restore', '--noflush']);
  t.ok(add.text.includes(`-d ${extra.clusterIP}`), 'the partial restore has the new ClusterIP');
  t.equal(add.text.split('\n').filter((l) => /^:KUBE-(SVC|SEP)-/.test(l)).length, 3, 'and only the new service\'s chains');
  const nadd = kernelAdd('nftables', 'ipv6', rs, extra);
  t.match(nadd.text, /ip6 kube-proxy/);
  t.ok(nadd.text.includes(extra.clusterIP!));
  // the IPv4 modes' text is what it was
  t.equal(kernelLoad('iptables-legacy', 'ipv4', benchRuleSet(5, 2), '/x').text, writeIptables(benchRuleSet(5, 2)));
  t.same(familiesOf('both'), ['ipv4', 'ipv6']);
  t.same([...modesOf('ipv6')], [...MODES6]);
  t.same([...modesOf('ipv4')], [...MODES]);
  t.equal(ALL_MODES.length, 5);
});

const reason = netnsUnavailableReason({ tun: true });
t.test('bench:e2e at N = 100, all four modes', { skip: reason ?? false, timeout: 240_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'tp-bench-e2e-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const log: string[] = [];
  const report: E2eReport = await runE2e({
    sizes: [100],
    endpoints: 2,
    seconds: 0.25, // what is checked is that each figure is measured, not the figure (the suite's time)
    cap: 60,
    modes: [...MODES],
    concurrency: 16,
    out,
    prefix: `tp-t${process.pid}`,
    log: (l) => log.push(l),
  });
  t.equal(report.ceiling.length, 2, 'the generator\'s ceiling from outside and from a pod');
  // rates are the benchmark's to report, not a test's to assert (a busy CI machine is slow): each must be measured, > 0
  for (const c of report.ceiling) t.ok(c.newFlowsPerSec > 0, `ceiling ${c.source}: ${c.newFlowsPerSec}/s`);
  t.equal(report.results.length, 4 * 2 * 2, 'mode × target × source');
  for (const mode of MODES) {
    for (const target of ['first', 'last']) {
      for (const source of ['outside', 'pod']) {
        const r = report.results.find((x) => x.mode === mode && x.target === target && x.source === source);
        const what = `${mode} ${target}/${source}`;
        if (!r) {
          t.fail(`${what}: missing`);
          continue;
        }
        t.equal(r.status, 'ok', `${what}: ok ${r.note ?? ''}`);
        t.equal(r.family, 'ipv4');
        t.equal(r.services, 100);
        t.equal(r.masquerade, source === 'outside');
        t.ok(r.loadMs! > 0 && r.loadMs! < 60_000, `${what}: load ${r.loadMs} ms`);
        t.ok(r.addServiceMs! > 0, `${what}: add ${r.addServiceMs} ms`);
        t.ok(r.addedServiceAnswered! >= 150, `${what}: the added service answers (${r.addedServiceAnswered}/200; a few may time out on a busy machine)`);
        t.ok(r.newFlowsPerSec! > 0, `${what}: ${r.newFlowsPerSec} new flows/s`);
        t.ok(r.newFlowRttP50Us! > 0 && r.newFlowRttP50Us! <= r.newFlowRttP99Us! && r.newFlowRttP99Us! < 1e6, `${what}: RTT p50 ${r.newFlowRttP50Us} p99 ${r.newFlowRttP99Us} µs`);
        t.ok(r.establishedReqPerSec! > 0, `${what}: ${r.establishedReqPerSec} established req/s`);
        t.ok(r.tcpConnectsPerSec! > 0, `${what}: ${r.tcpConnectsPerSec} TCP connects/s`);
        t.ok(r.memoryKiB !== null, `${what}: memory ${r.memoryKiB} KiB (${r.memoryKind})`);
        if (mode === 'tunproxy') t.ok(r.memoryKiB! > 10_000, 'tunproxy RSS is tens of MiB at least');
      }
    }
  }
  for (const f of ['e2e.json', 'e2e.md', 'e2e-new-flow-rtt.svg', 'e2e-new-flows.svg', 'e2e-load-time.svg']) t.ok(existsSync(join(out, f)), `${f} written`);
  t.match(readFileSync(join(out, 'e2e-new-flow-rtt.svg'), 'utf8'), /^<svg [^>]*>.*tunproxy/s, 'an SVG with a tunproxy line');
  const md = readFileSync(join(out, 'e2e.md'), 'utf8');
  t.match(md, /## Bars/);
  t.same(JSON.parse(readFileSync(join(out, 'e2e.json'), 'utf8')).results.length, 16);
  t.equal(bars(report).length, 5, 'the five bars are listed (not measurable at N = 100 alone)');
});

t.test('a load past the cap is killed and marked; larger sizes are skipped', { skip: reason ?? false, timeout: 120_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'tp-bench-e2e-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const report = await runE2e({
    sizes: [3000, 100],
    endpoints: 2,
    seconds: 0.25,
    cap: 0.001,
    modes: ['iptables-legacy'],
    concurrency: 4,
    out,
    prefix: `tp-t${process.pid}c`,
    log: () => {},
  });
  const at100 = report.results.filter((r) => r.services === 100);
  const at3000 = report.results.filter((r) => r.services === 3000);
  t.equal(at100.length, 4);
  t.ok(at100.every((r) => r.status === 'skipped' && /exceeded the cap of 0.001 s/.test(r.note!)), 'the smaller size ran first and hit the cap');
  t.ok(at3000.every((r) => r.status === 'skipped' && /not run: loading 100 services already exceeded the cap/.test(r.note!)), 'the larger one was not tried');
  t.ok(at100.every((r) => r.newFlowsPerSec === null), 'no traffic figures for a skipped cell');
});

t.test('bench:e2e --family ipv6 at N = 100: the ceiling, ip6tables-legacy, nftables and tunproxy', { skip: reason ?? false, timeout: 240_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'tp-bench-e2e6-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const log: string[] = [];
  const report: E2eReport = await runE2e({
    sizes: [100],
    endpoints: 2,
    seconds: 0.25, // what is checked is that each figure is measured, not the figure (the suite's time)
    cap: 60,
    modes: [...MODES6],
    family: 'ipv6',
    concurrency: 16,
    out,
    prefix: `tp-t6${process.pid}`,
    log: (l) => log.push(l),
  });
  t.equal(report.options.family, 'ipv6');
  t.equal(report.ceiling.length, 2, 'the IPv6 ceiling from outside and from a pod');
  for (const c of report.ceiling) {
    t.equal(c.family, 'ipv6');
    t.ok(c.newFlowsPerSec > 0, `IPv6 ceiling ${c.source}: ${c.newFlowsPerSec}/s answered`);
    t.ok(c.tcpConnectsPerSec > 0, `IPv6 ceiling ${c.source}: ${c.tcpConnectsPerSec} TCP connects/s`);
  }
  t.equal(report.results.length, 3 * 2 * 2, 'mode × target × source');
  t.ok(report.results.every((r) => r.family === 'ipv6'), 'every row says ipv6');
  for (const mode of MODES6) {
    for (const target of ['first', 'last']) {
      for (const source of ['outside', 'pod']) {
        const r = report.results.find((x) => x.mode === mode && x.target === target && x.source === source);
        const what = `ipv6 ${mode} ${target}/${source}`;
        if (!r) {
          t.fail(`${what}: missing`);
          continue;
        }
        t.ok(r.targetAddress.startsWith('fd00:10:96::'), `${what}: an IPv6 ClusterIP (${r.targetAddress})`);
        t.ok(r.loadMs! > 0, `${what}: loaded in ${r.loadMs} ms`);
        t.equal(r.status, 'ok', `${what}: ok ${r.note ?? ''}`);
        t.equal(r.masquerade, source === 'outside');
        t.ok(r.addedServiceAnswered! >= 150, `${what}: the added service answers (${r.addedServiceAnswered}/200; a few may time out on a busy machine)`);
        t.ok(r.newFlowsPerSec! > 0, `${what}: ${r.newFlowsPerSec} new flows/s`);
        t.ok(r.newFlowRttP50Us! > 0 && r.newFlowRttP50Us! <= r.newFlowRttP99Us!, `${what}: RTT p50 ${r.newFlowRttP50Us} p99 ${r.newFlowRttP99Us} µs`);
        t.ok(r.establishedReqPerSec! > 0, `${what}: ${r.establishedReqPerSec} established req/s`);
        t.ok(r.tcpConnectsPerSec! > 0, `${what}: ${r.tcpConnectsPerSec} TCP connects/s`);
      }
    }
  }
  const json = JSON.parse(readFileSync(join(out, 'e2e.json'), 'utf8'));
  t.same(json.results.map((r: { family: string }) => r.family), Array(12).fill('ipv6'));
  const md = readFileSync(join(out, 'e2e.md'), 'utf8');
  t.match(md, /# IPv6/);
  t.match(md, /\| services \| ip6tables-legacy \| nftables \| tunproxy \|/);
  for (const f of ['e2e-new-flow-rtt.svg', 'e2e-new-flows.svg', 'e2e-load-time.svg']) t.ok(existsSync(join(out, 'ipv6', f)), `ipv6/${f} written`);
  const b = bars(report);
  t.equal(b.length, 1, 'an IPv6-only run lists the IPv6 bar only');
  t.match(b[0].bar, /IPv6, 20 000 services, last: tunproxy new flows\/s ≥ 10× ip6tables-legacy/);
});
