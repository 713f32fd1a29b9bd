/**
 * `npm run bench:kube`: the node agent under a cluster's churn.
 *
 * The API server double runs in a process of its own (127.0.0.1), holding
 * 10 000 services with 3 endpoints each (one EndpointSlice each) and this
 * node. The agent (the same KubeAgent `tunproxy run --kubernetes` runs, with a
 * Dataplane's RuleSetHolder behind the holder adapter) runs in this process:
 * its CPU is this process's CPU. After the first sync, the double sends 100
 * EndpointSlice changes a second for 60 s (each moves one endpoint of one
 * service to a new address and stamps the time it is sent); the run is done
 * with --min-sync-period 0 and 1s.
 *
 *   latency      from the double sending a change (tunproxy.dev/sent-at-ms, the
 *                same clock) to the sync that put it in force returning: p50, p99, max
 *   cpuPercent   this process's user+system CPU over the churn / wall time (100 = one core)
 *   syncsPerSec  syncs that put rules in force, per second of churn
 *   packetsToRemovedEndpoints  after every sync, 4 new-flow packets per changed service
 *                go through the dataplane's pipeline with the tables in force; a DNAT to
 *                the address the change removed counts (must be 0)
 *   anchor       kube-proxy's iptables mode for the same change: the rules of the same
 *                rule set loaded with iptables-legacy-restore in a namespace of its own,
 *                then the partial restore of one EndpointSlice change (--noflush: the
 *                top-level chains, the changed service's chain, its new endpoint chain,
 *                the old one deleted), median of 5
 *
 * Writes bench/results/kube.json — {"runs": [{minSyncPeriodMs, services, changesPerSec,
 * seconds, latencyP50Ms, latencyP99Ms, latencyMaxMs, cpuPercent, syncsPerSec}],
 * "packetsToRemovedEndpoints": N} — and kube.md (with the anchor).
 *
 *   npm run bench:kube                       # the full run (10 000 services, 100/s, 60 s, periods 0 and 1s)
 *   npm run bench:kube -- --quick            # smoke: 1 000 services, 50/s, 5 s → bench/results/kube-quick.*
 *   options: --services N --rate R --seconds S --periods 0,1000
 */
import { spawnSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { KubeConfig } from '@kubernetes/client-node';
import { Dataplane } from '../control/dataplane.ts';
import { holderSink } from '../control/kube/adapter.ts';
import { KubeAgent } from '../control/kube/agent.ts';
import type { RuleSet } from '../control/types.ts';
import { writeIptables } from '../control/iptables/writer.ts';
import { parseIPv4 } from '../dataplane/addr.ts';
import { V_FORWARD } from '../dataplane/pipeline.ts';
import { DoubleProcess } from '../test/support/apiserver-double-process.ts';
import { endpointSlice, node, service } from '../test/support/kube-objects.ts';
import { pkt } from '../test/support/packets.ts';
import { addNetns, deleteNetns } from '../scripts/ns.ts';
import { argNum, machine, median, writeResults, fmt } from './common.ts';

const quick = process.argv.includes('--quick');
const SERVICES = argNum('services', quick ? 1000 : 10_000);
const RATE = argNum('rate', quick ? 50 : 100);
const SECONDS = argNum('seconds', quick ? 5 : 60);
const periodsArg = process.argv.indexOf('--periods');
const PERIODS = periodsArg > 0 ? process.argv[periodsArg + 1].split(',').map(Number) : [0, 1000];
const NODE = 'bench-node';
const log = (m: string) => process.stderr.write(`bench:kube: ${m}\n`);

const clusterIP = (i: number) => `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
const podIP = (i: number, k: number) => `10.${64 + ((i * 3 + k) >> 16)}.${((i * 3 + k) >> 8) & 255}.${(i * 3 + k) & 255}`;

function objects(): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [node(NODE, ['172.16.200.1'], '10.64.0.0/14')];
  for (let i = 0; i < SERVICES; i++) {
    const name = `svc-${i}`;
    out.push(service('bench', name, { clusterIP: clusterIP(i), ports: [{ name: 'dns', protocol: 'UDP', port: 53, targetPort: 5353 }] }));
    out.push(endpointSlice('bench', name, 'a', [{ name: 'dns', protocol: 'UDP', port: 5353 }], [0, 1, 2].map((k) => ({ ip: podIP(i, k), nodeName: 'other' }))));
  }
  return out;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

interface Run {
  minSyncPeriodMs: number;
  services: number;
  changesPerSec: number;
  seconds: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  latencyMaxMs: number;
  cpuPercent: number;
  syncsPerSec: number;
}

async function runOnce(double: DoubleProcess, minSyncPeriodMs: number, base: number): Promise<{ run: Run; toRemoved: number; checked: number; firstSyncMs: number; ruleSet: RuleSet }> {
  const kc = new KubeConfig();
  kc.loadFromString(double.kubeconfig);
  const dp = new Dataplane({ conntrackMax: 1 << 16 });
  // per service: when each pending change was sent, and the addresses it removed
  const pending = new Map<string, number[]>();
  const removedBy = new Map<string, Set<string>>();
  const lastAddrs = new Map<string, string[]>();
  const latencies: number[] = [];
  let measuring = false;
  let syncs = 0;
  let toRemoved = 0;
  let checked = 0;
  let forwarded = 0;
  let sport = 1024;
  const buf = new Uint8Array(2048);
  const agent = new KubeAgent({
    kubeConfig: kc,
    nodeName: NODE,
    sink: holderSink(dp.holder),
    minSyncPeriodMs,
    healthzBindAddress: null,
    healthCheckBindHost: null,
    log: (m) => log(`agent: ${m}`),
    onEvent: (kind, type, obj) => {
      if (kind !== 'endpointslice' || (type !== 'MODIFIED' && type !== 'ADDED')) return;
      const meta = obj.metadata as Record<string, any>;
      const key = `${meta.namespace}/${meta.labels?.['kubernetes.io/service-name']}`;
      const addrs = ((obj.endpoints as Array<{ addresses: string[] }>) ?? []).map((e) => e.addresses[0]);
      // the slice as it was (the watch event is seen before the informer files it in the cache)
      const cached = agent.cache.slices.get(key)?.get(meta.name) as { endpoints?: Array<{ addresses: string[] }> } | undefined;
      const before = lastAddrs.get(key) ?? cached?.endpoints?.map((e) => e.addresses[0]);
      lastAddrs.set(key, addrs);
      if (before) {
        const gone = before.filter((a) => !addrs.includes(a));
        if (gone.length) {
          const set = removedBy.get(key) ?? new Set<string>();
          for (const a of gone) set.add(a);
          for (const a of addrs) set.delete(a);
          removedBy.set(key, set);
        }
      }
      const sent = Number(meta.annotations?.['tunproxy.dev/sent-at-ms']);
      if (measuring && Number.isFinite(sent)) {
        const list = pending.get(key) ?? [];
        list.push(sent);
        pending.set(key, list);
      }
    },
    onSync: (r) => {
      if (r.result === null) return;
      const inForce = performance.timeOrigin + performance.now();
      if (measuring) syncs++;
      const tables = dp.holder.current!;
      for (const key of r.keys) {
        const sent = pending.get(key);
        if (sent) {
          for (const s of sent) latencies.push(inForce - s);
          pending.delete(key);
        }
        const gone = removedBy.get(key);
        if (!gone || !measuring) continue;
        // new flows to the service, through the pipeline with the tables now in force
        const i = Number(key.slice(key.lastIndexOf('-') + 1));
        const goneNums = new Set([...gone].map(parseIPv4));
        for (let k = 0; k < 4; k++) {
          const p = pkt({ proto: 17, src: '172.16.200.9', dst: clusterIP(i), sport: (sport = sport >= 65000 ? 1024 : sport + 1), dport: 53, payload: 'q' });
          buf.set(p);
          const v = dp.pipeline.process(buf, 0, p.length, tables, dp.clock());
          checked++;
          if (v === V_FORWARD) {
            forwarded++;
            const dst = ((buf[16] << 24) | (buf[17] << 16) | (buf[18] << 8) | buf[19]) >>> 0;
            if (goneNums.has(dst)) toRemoved++;
          }
        }
        removedBy.delete(key);
      }
    },
  });
  const t0 = performance.now();
  await agent.start();
  while (dp.holder.generation === 0 || (dp.holder.ruleSet?.services.length ?? 0) < SERVICES) {
    if (performance.now() - t0 > 120_000) throw new Error('no first sync with every service in 120 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  const firstSyncMs = performance.now() - t0;
  log(`min-sync-period ${minSyncPeriodMs} ms: first sync of ${SERVICES} services ${fmt(firstSyncMs)} ms after start`);
  await new Promise((r) => setTimeout(r, 1000));
  measuring = true;
  const cpu0 = process.cpuUsage();
  const w0 = performance.now();
  const churn = await double.call('churn', { perSecond: RATE, seconds: SECONDS, base });
  // the last changes: synced within one period (plus a margin)
  const deadline = performance.now() + minSyncPeriodMs + 5000;
  while (pending.size > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  const wall = (performance.now() - w0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  measuring = false;
  if (pending.size > 0) log(`${pending.size} services still pending at the end: their changes are not in the figures`);
  const ruleSet = dp.holder.ruleSet!;
  await agent.stop();
  latencies.sort((a, b) => a - b);
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const run: Run = {
    minSyncPeriodMs,
    services: SERVICES,
    changesPerSec: Math.round((churn.sent / churn.seconds) * 10) / 10,
    seconds: SECONDS,
    latencyP50Ms: r2(pct(latencies, 50)),
    latencyP99Ms: r2(pct(latencies, 99)),
    latencyMaxMs: r2(latencies.at(-1) ?? NaN),
    cpuPercent: Math.round(((cpu.user + cpu.system) / 1e6 / wall) * 1000) / 10,
    syncsPerSec: Math.round((syncs / wall) * 10) / 10,
  };
  log(`min-sync-period ${minSyncPeriodMs} ms: ${latencies.length} changes, p50 ${run.latencyP50Ms} ms, p99 ${run.latencyP99Ms} ms, max ${run.latencyMaxMs} ms, CPU ${run.cpuPercent} %, ${run.syncsPerSec} syncs/s; ${checked} packets checked (${forwarded} forwarded), ${toRemoved} to removed endpoints`);
  if (forwarded < checked) throw new Error(`${checked - forwarded} of the check packets were not forwarded: the check would prove nothing`);
  return { run, toRemoved, checked, firstSyncMs, ruleSet };
}

// ------------------------------------------------------------------ the anchor: kube-proxy's partial iptables-restore

/** chain → its rule lines, and the order of declarations, of an iptables-save text (nat table). */
function chainsOf(text: string): { decl: Map<string, string>; rules: Map<string, string[]> } {
  const decl = new Map<string, string>();
  const rules = new Map<string, string[]>();
  let table = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1);
    if (table !== 'nat') continue;
    if (line.startsWith(':')) {
      const c = line.slice(1).split(' ')[0];
      decl.set(c, line);
      rules.set(c, []);
    } else if (line.startsWith('-A ')) rules.get(line.split(' ')[1])?.push(line);
  }
  return { decl, rules };
}

const TOP_LEVEL = new Set(['KUBE-SERVICES', 'KUBE-EXTERNAL-SERVICES', 'KUBE-FORWARD', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ', 'KUBE-PROXY-FIREWALL', 'KUBE-FIREWALL']);

/**
 * kube-proxy's partial sync (MinimizeIPTablesRestore) for a change: the top-level chains rewritten
 * whole, every chain that is new or whose rules changed, and the chains that went away flushed
 * and deleted (`:CHAIN` + `-X CHAIN`), in one --noflush restore of the nat table.
 */
export function partialForChange(before: string, after: string): string {
  const b = chainsOf(before);
  const a = chainsOf(after);
  const out = ['*nat'];
  const write: string[] = [];
  for (const [c, line] of a.decl) {
    const old = b.rules.get(c);
    if (TOP_LEVEL.has(c) || old === undefined || old.join('\n') !== a.rules.get(c)!.join('\n')) {
      out.push(line);
      write.push(...a.rules.get(c)!);
    }
  }
  const gone = [...b.decl.keys()].filter((c) => !a.decl.has(c));
  for (const c of gone) out.push(b.decl.get(c)!);
  out.push(...write, ...gone.map((c) => `-X ${c}`), 'COMMIT');
  return out.join('\n') + '\n';
}

function anchor(rs: RuleSet): { fullLoadMs: number; partialMs: number; partialLines: number; binary: string } | { skipped: string } {
  const bin = 'iptables-legacy-restore';
  if (spawnSync(bin, ['--help'], { stdio: 'ignore' }).error) return { skipped: `${bin} is not installed` };
  const ns = `tp-b${process.pid}-kube`;
  const timed = (args: string[], input: string) => {
    const t0 = performance.now();
    const r = spawnSync('ip', ['netns', 'exec', ns, bin, ...args], { input, encoding: 'utf8', maxBuffer: 1 << 28 });
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')}: ${r.stderr}`);
    return ms;
  };
  try {
    try {
      deleteNetns(ns);
      addNetns(ns);
    } catch (e) {
      return { skipped: `no network namespace for it (${(e as Error).message.split('\n')[0]})` };
    }
    const base = writeIptables(rs);
    const fullLoadMs = timed([], base);
    // one EndpointSlice change, as in the churn: an endpoint of one service moves, and back
    const i = Math.floor(rs.services.length / 2);
    const svc = rs.services[i];
    const moved: RuleSet = { ...rs, services: rs.services.map((s, k) => (k === i ? { ...s, endpoints: s.endpoints!.map((e, j) => (j === 0 ? { ...e, address: '10.127.255.1' } : e)) } : s)) };
    const changed = writeIptables(moved);
    const there = partialForChange(base, changed);
    const back = partialForChange(changed, base);
    const times: number[] = [];
    for (let k = 0; k < 5; k++) {
      times.push(timed(['--noflush'], there));
      timed(['--noflush'], back);
    }
    log(`anchor: ${bin} full load of ${rs.services.length} services ${fmt(fullLoadMs)} ms; partial restore for one change of ${svc.namespace}/${svc.name}: median ${fmt(median(times), 1)} ms (${there.split('\n').length} lines)`);
    return { fullLoadMs: Math.round(fullLoadMs), partialMs: Math.round(median(times) * 10) / 10, partialLines: there.split('\n').length - 1, binary: bin };
  } finally {
    deleteNetns(ns);
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  log(`${quick ? 'quick smoke run: ' : ''}${SERVICES} services × 3 endpoints, ${RATE} EndpointSlice changes/s for ${SECONDS} s, min sync periods ${PERIODS.join(', ')} ms`);
  const double = await DoubleProcess.start(null, ['--host', '127.0.0.1', '--port', '0', '--bookmark-ms', '1000']);
  try {
    const objs = objects();
    for (let k = 0; k < objs.length; k += 2000) await double.call('apply', { objects: objs.slice(k, k + 2000) });
    const runs: Run[] = [];
    let toRemoved = 0;
    let checked = 0;
    let lastRs: RuleSet | null = null;
    for (const p of PERIODS) {
      // every run moves endpoints to addresses of its own (no change repeats the previous run's)
      const r = await runOnce(double, p, runs.length * Math.ceil(RATE * SECONDS));
      runs.push(r.run);
      toRemoved += r.toRemoved;
      checked += r.checked;
      lastRs = r.ruleSet;
    }
    const a = anchor(lastRs!);
    const json = { runs, packetsToRemovedEndpoints: toRemoved };
    const md = [
      `# bench:kube — the node agent under EndpointSlice churn${quick ? ' (quick smoke run)' : ''}`,
      '',
      `${machine()}`,
      '',
      `${SERVICES} services × 3 endpoints held by the API server double (its own process); the agent (KubeAgent + RuleSetHolder, incremental path) in the benchmark process. ${RATE} EndpointSlice changes/s for ${SECONDS} s. Latency: the double sending a change → the sync that put it in force returned.`,
      '',
      '| --min-sync-period | services | changes/s | s | p50 ms | p99 ms | max ms | agent CPU % | syncs/s |',
      '|---|---|---|---|---|---|---|---|---|',
      ...runs.map((r) => `| ${r.minSyncPeriodMs} ms | ${r.services} | ${r.changesPerSec} | ${r.seconds} | ${r.latencyP50Ms} | ${r.latencyP99Ms} | ${r.latencyMaxMs} | ${r.cpuPercent} | ${r.syncsPerSec} |`),
      '',
      `Packets to removed endpoints: ${toRemoved} (of ${checked} new-flow packets sent through the pipeline right after the syncs of the changed services).`,
      '',
      'skipped' in a
        ? `Anchor (kube-proxy's iptables mode): not measured: ${a.skipped}`
        : `Anchor (kube-proxy's iptables mode, the same change): ${a.binary} --noflush of the partial rules (${a.partialLines} lines: top-level chains, the service's chain, the new endpoint chain, the old one deleted) takes ${a.partialMs} ms (median of 5) over the ${SERVICES} services' rules (full load ${a.fullLoadMs} ms) — before kube-proxy's own min-sync-period wait.`,
      '',
    ].filter((l, i, arr) => !(l === '' && arr[i - 1] === '')).join('\n');
    writeResults(quick ? 'kube-quick' : 'kube', json, md);
  } finally {
    await double.stop();
  }
}

await main();
