/**
 * CI smoke of `npm run bench:e2e`: the whole harness at 100 services, about a
 * second per cell, all four modes, into a temporary directory — every cell
 * present and measured, numbers sane, the files written; a load past the cap
 * is killed and marked, and the larger sizes of that mode are skipped.
 */
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODES, bars, benchRuleSet, extraService, partialRestoreText, runE2e } from '../../bench/e2e.ts';
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

const reason = netnsUnavailableReason({ tun: true });
t.test('bench:e2e at N = 100, all four modes', { skip: reason ?? false, timeout: 240_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'tp-bench-e2e-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const log: string[] = [];
  const report: E2eReport = await runE2e({
    sizes: [100],
    endpoints: 2,
    seconds: 0.5,
    cap: 60,
    modes: [...MODES],
    concurrency: 16,
    out,
    prefix: `tp-t${process.pid}`,
    log: (l) => log.push(l),
  });
  t.equal(report.ceiling.length, 2, 'the generator\'s ceiling from outside and from a pod');
  for (const c of report.ceiling) t.ok(c.newFlowsPerSec > 1000, `ceiling ${c.source}: ${c.newFlowsPerSec}/s`);
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
        t.equal(r.services, 100);
        t.equal(r.masquerade, source === 'outside');
        t.ok(r.loadMs! > 0 && r.loadMs! < 60_000, `${what}: load ${r.loadMs} ms`);
        t.ok(r.addServiceMs! > 0, `${what}: add ${r.addServiceMs} ms`);
        t.ok(r.addedServiceAnswered! >= 190, `${what}: the added service answers (${r.addedServiceAnswered}/200)`);
        t.ok(r.newFlowsPerSec! > 500, `${what}: ${r.newFlowsPerSec} new flows/s`);
        t.ok(r.newFlowRttP50Us! > 0 && r.newFlowRttP50Us! <= r.newFlowRttP99Us! && r.newFlowRttP99Us! < 1e6, `${what}: RTT p50 ${r.newFlowRttP50Us} p99 ${r.newFlowRttP99Us} µs`);
        t.ok(r.establishedReqPerSec! > 500, `${what}: ${r.establishedReqPerSec} established req/s`);
        t.ok(r.tcpConnectsPerSec! > 200, `${what}: ${r.tcpConnectsPerSec} TCP connects/s`);
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
