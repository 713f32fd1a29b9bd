/**
 * `npm run bench:e2e` — the same services, clients and namespaces served by
 * (a) iptables-legacy with kube-proxy's rules, (b) iptables-nft with the same
 * rules, (c) nftables with kube-proxy's nftables-mode rules, (d) tunproxy;
 * measured with the same load generator (scripts/loadgen.ts, raw sockets).
 *
 *   npm run bench:e2e -- [--sizes 100,10000] [--endpoints 3] [--seconds 5] [--cap 180]
 *                        [--family ipv4|ipv6|both]
 *                        [--modes iptables-legacy,iptables-nft,ip6tables-legacy,nftables,tunproxy]
 *                        [--concurrency 32] [--out DIR] [--tunproxy-cpu-prof DIR]
 *
 * --family (default ipv4, the run of before): ipv6 runs the same measurements
 * over IPv6 — N single-stack IPv6 services (ClusterIPs from the /108 service
 * CIDR fd00:10:96::/108, IPv6 endpoints, bench/gen.ts), the lab with IPv6 on
 * every link (bench/e2e-lab.ts), the load generator crafting IPv6 packets —
 * in the modes ip6tables-legacy (ip6tables-legacy-restore of kube-proxy's IPv6
 * proxier's rules), nftables (`nft -f` of its `table ip6 kube-proxy`) and
 * tunproxy; both runs IPv4 then IPv6. --modes lists modes of either family;
 * each family runs those of its own (IPv4: iptables-legacy, iptables-nft,
 * nftables, tunproxy; IPv6: ip6tables-legacy, nftables, tunproxy). Every row
 * of e2e.json says its `family` ("ipv4" or "ipv6"). A cell whose new flows get
 * no answer at all is recorded failed with the reason, never as a number.
 *
 * For each size N one rule set (bench/gen.ts: N UDP services port 53 →
 * targetPort 5353, E endpoints on E pod addresses shared by every service; the
 * first and the last service also get a TCP port 80 → 8080 for the connect
 * test). For each mode and N a fresh lab (bench/e2e-lab.ts), then:
 *   load     the whole rule set: iptables-*-restore / nft -f (wall time of the
 *            command), tunproxy: PUT /v1/ruleset through its API (SIGHUP reload
 *            of the file when the API is absent) — tunproxy is started first
 *   memory   kernel: Slab + VmallocUsed + Percpu (/proc/meminfo) after − before
 *            the load; tunproxy: its RSS after the load
 *   traffic  to the first and the last service of the chain order, from outside
 *            the pod CIDR (the client: masquerade applies) and from inside it (a
 *            client pod): new flows (K in flight, S s; and K = 1 for the RTT),
 *            established requests, TCP connects
 *   add one  kube-proxy's way: a partial `iptables-restore --noflush` (KUBE-SERVICES
 *            and the other top-level chains rewritten, plus the new service's
 *            chains), `nft -f` of the new chains + `add element`; tunproxy: PUT
 *            /v1/services/{ns}/{name} (SIGHUP of the file with N+1 services without
 *            the API); then 200 requests to the new service must be answered
 * A load that runs past --cap seconds is killed (by PID) and the cell is
 * marked skipped, as are the larger sizes of that mode.
 *
 * Before everything, the generator's ceiling: the same runs against an
 * endpoint's own address on the plain routed path (no rules, no NAT, no
 * conntrack); a result within 20 % of it is flagged nearCeiling.
 *
 * Results: <out>/e2e.json (one object per mode × size × target × source, field
 * names below are stable), <out>/e2e.md, and the SVG charts (bench/charts.ts).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { syntheticRuleSet } from './gen.ts';
import { RESULTS_DIR, machine } from './common.ts';
import { writeIptables, partialRestoreText } from '../control/iptables/writer.ts';
import { writeNftables, writeNftablesServiceAdd } from '../control/nftables/writer.ts';
import type { RuleSet, Service } from '../control/types.ts';
import { CLIENT_POD_SOURCES, CLIENT_POD_SOURCES6, CLIENT_SOURCES, CLIENT_SOURCES6, TUN_NAME, e2eLabDown, e2eLabUp } from './e2e-lab.ts';
import type { E2eLab } from './e2e-lab.ts';
import { LoadAgent, TunproxyProc, kernelMemorySample, rssKiB, timedInNs, tunproxyHasApi, unixHttp } from './e2e-run.ts';
import { nearCeiling } from '../scripts/loadgen.ts';
import { hostPort } from '../dataplane/addr6.ts';
import type { LoadMode, LoadResult, LoadSpec } from '../scripts/loadgen.ts';
import { renderCharts } from './charts.ts';

/** the IPv4 run's modes */
export const MODES = ['iptables-legacy', 'iptables-nft', 'nftables', 'tunproxy'] as const;
/** the IPv6 run's modes */
export const MODES6 = ['ip6tables-legacy', 'nftables', 'tunproxy'] as const;
export const ALL_MODES = ['iptables-legacy', 'iptables-nft', 'ip6tables-legacy', 'nftables', 'tunproxy'] as const;
export type Mode = (typeof ALL_MODES)[number];
export type Family = 'ipv4' | 'ipv6';
export type FamilyOption = Family | 'both';

/** The modes a family's run has. */
export function modesOf(family: Family): readonly Mode[] {
  return family === 'ipv6' ? MODES6 : MODES;
}

/** The families a --family value runs, in order. */
export function familiesOf(f: FamilyOption): Family[] {
  return f === 'both' ? ['ipv4', 'ipv6'] : [f];
}
export const DEFAULT_SIZES = [100, 1000, 5000, 10000, 20000, 50000, 100000];

const UDP_PORT = 53;
const UDP_TARGET_PORT = 5353;
const TCP_PORT = 80;
const TCP_TARGET_PORT = 8080;
const TUNPROXY_CONNTRACK_MAX = 131072;

export interface E2eOptions {
  sizes: number[];
  endpoints: number;
  seconds: number;
  /** seconds */
  cap: number;
  modes: Mode[];
  /** default 'ipv4' */
  family?: FamilyOption;
  concurrency: number;
  /** where e2e.json, e2e.md and the charts go */
  out: string;
  prefix: string;
  tunproxyCpuProf?: string;
  log: (line: string) => void;
}

export type Source = 'outside' | 'pod';

/** One object per mode × size × target × source in e2e.json. */
export interface E2eRecord {
  mode: Mode;
  /** the IP family of the services, addresses and traffic of this row */
  family: Family;
  services: number;
  endpointsPerService: number;
  /** first or last service of the chain order (KUBE-SERVICES / rule-set order) */
  target: 'first' | 'last';
  targetAddress: string;
  /** 'outside': the client, outside the pod CIDR (masquerade applies); 'pod': a client pod inside it */
  source: Source;
  masquerade: boolean;
  status: 'ok' | 'skipped' | 'failed';
  /** why a cell was skipped or failed */
  note: string | null;
  /** time to load the rule set (ms) and how */
  loadMs: number | null;
  loadMethod: string;
  /** time to add one service to the loaded set (ms) and how */
  addServiceMs: number | null;
  addServiceMethod: string;
  /** of 200 requests to the added service, how many were answered */
  addedServiceAnswered: number | null;
  /** kernel modes: Slab+VmallocUsed+Percpu delta over the load; tunproxy: RSS after the load */
  memoryKiB: number | null;
  memoryKind: 'kernel' | 'rss';
  /** tunproxy: the compile time it reports for the load (ms) */
  compileMs: number | null;
  /** new flows, K in flight */
  newFlowsPerSec: number | null;
  newFlowLoadedRttP50Us: number | null;
  newFlowLoadedRttP99Us: number | null;
  newFlowLost: number | null;
  /** new flows one at a time (K = 1): the RTT of a first packet */
  newFlowRttP50Us: number | null;
  newFlowRttP90Us: number | null;
  newFlowRttP99Us: number | null;
  newFlowRttMaxUs: number | null;
  /** one 5-tuple, K in flight */
  establishedReqPerSec: number | null;
  establishedRttP50Us: number | null;
  establishedRttP99Us: number | null;
  /** SYN → SYN-ACK from fresh 5-tuples, K in flight */
  tcpConnectsPerSec: number | null;
  tcpConnectRttP50Us: number | null;
  tcpConnectRttP99Us: number | null;
  /** within 20 % of the generator's ceiling on the plain routed path */
  nearCeiling: { newFlows: boolean; established: boolean; tcpConnect: boolean };
}

export interface CeilingRecord {
  family: Family;
  source: Source;
  newFlowsPerSec: number;
  newFlowRttP50Us: number;
  establishedReqPerSec: number;
  tcpConnectsPerSec: number;
}

export interface E2eReport {
  benchmark: 'e2e';
  generatedAt: string;
  machine: string;
  command: string;
  options: { sizes: number[]; endpoints: number; seconds: number; cap: number; modes: Mode[]; family: FamilyOption; concurrency: number };
  tunproxyApi: boolean;
  durationSeconds: number;
  ceiling: CeilingRecord[];
  results: E2eRecord[];
}

// ------------------------------------------------------------------ rule sets

/** N UDP services (+ TCP on the first and the last); family ipv6: single-stack IPv6 services (bench/gen.ts). */
export function benchRuleSet(n: number, endpoints: number, family: Family = 'ipv4'): RuleSet {
  const rs = syntheticRuleSet(n, { endpoints, protocol: 'UDP', port: UDP_PORT, targetPort: UDP_TARGET_PORT, pods: endpoints, family });
  const withTcp = (s: Service): Service => ({ ...s, ports: [...s.ports, { name: 'tcp', protocol: 'TCP', port: TCP_PORT, targetPort: TCP_TARGET_PORT }] });
  rs.services[0] = withTcp(rs.services[0]);
  if (n > 1) rs.services[n - 1] = withTcp(rs.services[n - 1]);
  return rs;
}

/** The service added by the add-one measurement: the next one the generator would make. */
export function extraService(n: number, endpoints: number, family: Family = 'ipv4'): Service {
  return syntheticRuleSet(n + 1, { endpoints, protocol: 'UDP', port: UDP_PORT, targetPort: UDP_TARGET_PORT, pods: endpoints, family }).services[n];
}

/** The pods' addresses of a family (one pod per endpoint, shared by every service). */
export function benchEndpoints(endpoints: number, family: Family): string[] {
  return syntheticRuleSet(1, { endpoints, pods: endpoints, family }).services[0].endpoints!.map((e) => e.address);
}

// ------------------------------------------------------------------ the kernel modes' rules
//
// The one place the kernel modes' rule text comes from: kube-proxy's writers
// (control/iptables/writer.ts, control/nftables/writer.ts), for the family's
// proxier (IPv6: ip6tables-restore input, nft's `table ip6 kube-proxy`).

const famNum = (f: Family): 4 | 6 => (f === 'ipv6' ? 6 : 4);

/** kube-proxy's IPv6 iptables rules (ip6tables-restore input) for the rule set's IPv6 service ports. */
export function ip6Rules(rs: RuleSet, withHooks = true): string {
  return writeIptables(rs, { family: 6, withHooks });
}

/** kube-proxy's nftables-mode `ip6` table for the rule set's IPv6 service ports (`nft -f` input). */
export function nft6Rules(rs: RuleSet): string {
  return writeNftables(rs, { family: 6 });
}

/** The whole rule set in a kernel mode's form, and the command that loads FILE. */
export function kernelLoad(mode: Mode, family: Family, rs: RuleSet, file: string): { text: string; argv: string[] } {
  switch (mode) {
    case 'nftables':
      return { text: family === 'ipv6' ? nft6Rules(rs) : writeNftables(rs), argv: ['nft', '-f', file] };
    case 'ip6tables-legacy':
      return { text: ip6Rules(rs), argv: ['ip6tables-legacy-restore', file] };
    case 'iptables-legacy':
    case 'iptables-nft':
      return { text: writeIptables(rs), argv: [mode === 'iptables-legacy' ? 'iptables-legacy-restore' : 'iptables-nft-restore', file] };
    default:
      throw new Error(`${mode} is not a kernel mode`);
  }
}

/** Adding one service kube-proxy's way: the text and the command that reads it on stdin. */
export function kernelAdd(mode: Mode, family: Family, rs: RuleSet, extra: Service): { text: string; argv: string[] } {
  const rsPlus: RuleSet = { ...rs, services: [...rs.services, extra] };
  switch (mode) {
    case 'nftables':
      return { text: writeNftablesServiceAdd(rs, extra, { family: famNum(family) }), argv: ['nft', '-f', '-'] };
    case 'ip6tables-legacy':
      return { text: partialRestoreText(ip6Rules(rs), ip6Rules(rsPlus, false)), argv: ['ip6tables-legacy-restore', '--noflush'] };
    case 'iptables-legacy':
    case 'iptables-nft':
      return {
        text: partialRestoreText(writeIptables(rs), writeIptables(rsPlus, { withHooks: false })),
        argv: [mode === 'iptables-legacy' ? 'iptables-legacy-restore' : 'iptables-nft-restore', '--noflush'],
      };
    default:
      throw new Error(`${mode} is not a kernel mode`);
  }
}

// kube-proxy's partial-sync text: with the iptables writer now (control/iptables/writer.ts), exported here too for its users
export { partialRestoreText };

// ------------------------------------------------------------------ measuring

interface TrafficSet {
  newFlows: LoadResult;
  newFlowLatency: LoadResult;
  established: LoadResult;
  tcpConnect: LoadResult;
}

/** the CPU the one-at-a-time runs are pinned to */
const PIN_CPU = 1;

/** taskset every thread of these processes to one CPU (null: to every CPU again). */
function pinCpus(pids: number[], cpu: number | null): void {
  const cpus = cpu === null ? `0-${Math.max(0, availableParallelism() - 1)}` : String(Math.min(cpu, availableParallelism() - 1));
  for (const pid of pids) spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

/** A run whose new flows got no answer at all: the cell is failed with this reason, not given a number. */
export class NoAnswers extends Error {}

const SOURCES: Record<Family, Record<Source, string>> = {
  ipv4: { outside: CLIENT_SOURCES, pod: CLIENT_POD_SOURCES },
  ipv6: { outside: CLIENT_SOURCES6, pod: CLIENT_POD_SOURCES6 },
};

class Runner {
  private tupleOffset = 0;
  constructor(
    private readonly o: E2eOptions,
    private readonly agents: Record<Source, LoadAgent>,
    private readonly family: Family = 'ipv4',
  ) {}

  resetTuples(): void {
    this.tupleOffset = 0;
  }

  async load(source: Source, mode: LoadMode, target: string, port: number, extra: Partial<LoadSpec>): Promise<LoadResult> {
    const spec: LoadSpec = {
      mode,
      target,
      port,
      sources: SOURCES[this.family][source],
      seconds: this.o.seconds,
      concurrency: this.o.concurrency,
      timeoutMs: 1000,
      tupleOffset: this.tupleOffset,
      ...extra,
    };
    const r = await this.agents[source].run(spec);
    this.tupleOffset += r.tuplesUsed + 1;
    return r;
  }

  /**
   * The four runs against one destination (UDP port for new/established, TCP port for connects).
   * The one-at-a-time run has every process on its path (`pinned`: generator, responders,
   * tunproxy) on one CPU: in this VM a wake-up across CPUs costs ~70 µs, more than the
   * path itself, and which CPU each process sits on would otherwise decide the figure.
   */
  async traffic(source: Source, address: string, udpPort: number, tcpPort: number, pinned: number[]): Promise<TrafficSet> {
    const short = Math.max(0.25, Math.min(2, this.o.seconds / 2));
    const newFlows = await this.load(source, 'new', address, udpPort, {});
    if (newFlows.completed === 0) {
      throw new NoAnswers(
        `no answers: not one new-flow request to ${hostPort(address, udpPort)} from ${SOURCES[this.family][source]} was answered in ${newFlows.seconds} s ` +
          `(K=${newFlows.concurrency} in flight, ${newFlows.sent} more sent in the window, ${newFlows.lost} lost, timeout 1000 ms)` +
          (newFlows.sendErrors ? ` (${newFlows.sendErrors} send errors: ${newFlows.firstSendError})` : ''),
      );
    }
    const all = [this.agents[source].pid, ...pinned];
    pinCpus(all, PIN_CPU);
    let newFlowLatency: LoadResult;
    try {
      newFlowLatency = await this.load(source, 'new', address, udpPort, { concurrency: 1, seconds: short });
    } finally {
      pinCpus(all, null);
    }
    const established = await this.load(source, 'established', address, udpPort, { seconds: short });
    const tcpConnect = await this.load(source, 'tcp-connect', address, tcpPort, { seconds: short });
    return { newFlows, newFlowLatency, established, tcpConnect };
  }
}

function emptyRecord(mode: Mode, family: Family, n: number, e: number, target: 'first' | 'last', address: string, source: Source): E2eRecord {
  return {
    mode,
    family,
    services: n,
    endpointsPerService: e,
    target,
    targetAddress: address,
    source,
    masquerade: source === 'outside',
    status: 'ok',
    note: null,
    loadMs: null,
    loadMethod: loadMethodOf(mode),
    addServiceMs: null,
    addServiceMethod: addMethodOf(mode),
    addedServiceAnswered: null,
    memoryKiB: null,
    memoryKind: mode === 'tunproxy' ? 'rss' : 'kernel',
    compileMs: null,
    newFlowsPerSec: null,
    newFlowLoadedRttP50Us: null,
    newFlowLoadedRttP99Us: null,
    newFlowLost: null,
    newFlowRttP50Us: null,
    newFlowRttP90Us: null,
    newFlowRttP99Us: null,
    newFlowRttMaxUs: null,
    establishedReqPerSec: null,
    establishedRttP50Us: null,
    establishedRttP99Us: null,
    tcpConnectsPerSec: null,
    tcpConnectRttP50Us: null,
    tcpConnectRttP99Us: null,
    nearCeiling: { newFlows: false, established: false, tcpConnect: false },
  };
}

function loadMethodOf(mode: Mode): string {
  switch (mode) {
    case 'iptables-legacy':
      return 'iptables-legacy-restore FILE';
    case 'iptables-nft':
      return 'iptables-nft-restore FILE';
    case 'ip6tables-legacy':
      return 'ip6tables-legacy-restore FILE';
    case 'nftables':
      return 'nft -f FILE';
    case 'tunproxy':
      return tunproxyHasApi() ? 'PUT /v1/ruleset' : 'SIGHUP reload of --rules';
  }
}

function addMethodOf(mode: Mode): string {
  switch (mode) {
    case 'iptables-legacy':
      return 'iptables-legacy-restore --noflush (partial)';
    case 'iptables-nft':
      return 'iptables-nft-restore --noflush (partial)';
    case 'ip6tables-legacy':
      return 'ip6tables-legacy-restore --noflush (partial)';
    case 'nftables':
      return 'nft -f (new chains + add element)';
    case 'tunproxy':
      return tunproxyHasApi() ? 'PUT /v1/services/{ns}/{name}' : 'SIGHUP reload of --rules (N+1 services)';
  }
}

function fill(r: E2eRecord, t: TrafficSet, ceiling: CeilingRecord | undefined): void {
  r.newFlowsPerSec = t.newFlows.perSec;
  r.newFlowLoadedRttP50Us = t.newFlows.rttUs.p50;
  r.newFlowLoadedRttP99Us = t.newFlows.rttUs.p99;
  r.newFlowLost = t.newFlows.lost;
  r.newFlowRttP50Us = t.newFlowLatency.rttUs.p50;
  r.newFlowRttP90Us = t.newFlowLatency.rttUs.p90;
  r.newFlowRttP99Us = t.newFlowLatency.rttUs.p99;
  r.newFlowRttMaxUs = t.newFlowLatency.rttUs.max;
  r.establishedReqPerSec = t.established.perSec;
  r.establishedRttP50Us = t.established.rttUs.p50;
  r.establishedRttP99Us = t.established.rttUs.p99;
  r.tcpConnectsPerSec = t.tcpConnect.perSec;
  r.tcpConnectRttP50Us = t.tcpConnect.rttUs.p50;
  r.tcpConnectRttP99Us = t.tcpConnect.rttUs.p99;
  r.nearCeiling = {
    newFlows: nearCeiling(t.newFlows.perSec, ceiling?.newFlowsPerSec),
    established: nearCeiling(t.established.perSec, ceiling?.establishedReqPerSec),
    tcpConnect: nearCeiling(t.tcpConnect.perSec, ceiling?.tcpConnectsPerSec),
  };
}

/** Start the two load generators of a lab. */
async function agentsFor(lab: E2eLab): Promise<Record<Source, LoadAgent>> {
  const outside = await LoadAgent.start(lab.clientNs);
  try {
    return { outside, pod: await LoadAgent.start(lab.clientPodNs) };
  } catch (e) {
    await outside.stop();
    throw e;
  }
}

function kernelSysctls(): Record<string, number> {
  // Millions of one-request flows through one masquerade address: with the default 30 s
  // UDP timeout the 64 k source ports per endpoint run out within the run and the
  // kernel drops packets for want of a port. Short timeouts keep that out of the figures.
  return {
    'net.netfilter.nf_conntrack_udp_timeout': 2,
    'net.netfilter.nf_conntrack_tcp_timeout_close': 2,
    'net.netfilter.nf_conntrack_tcp_timeout_syn_recv': 5,
  };
}

export async function runE2e(o: E2eOptions): Promise<E2eReport> {
  const t0 = performance.now();
  const log = o.log;
  const endpoints = benchEndpoints(o.endpoints, 'ipv4');
  const endpoints6 = benchEndpoints(o.endpoints, 'ipv6');
  const families = familiesOf(o.family ?? 'ipv4');
  for (const f of families) if (!o.modes.some((m) => modesOf(f).includes(m))) throw new Error(`bench:e2e: none of the modes ${o.modes.join(', ')} runs in ${f} (its modes: ${modesOf(f).join(', ')})`);
  const work = mkdtempSync(join(tmpdir(), 'tunproxy-e2e-'));
  const results: E2eRecord[] = [];
  const ceiling: CeilingRecord[] = [];
  const hasApi = tunproxyHasApi();
  let labSeq = 0;
  const nextPrefix = () => `${o.prefix}-${labSeq++}`;
  const cleanup = async () => {
    for (let i = 0; i < labSeq; i++) await e2eLabDown(`${o.prefix}-${i}`).catch(() => {});
  };
  const onSignal = () => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    for (const family of families) {
      const v6 = family === 'ipv6';
      const labFamily = v6 ? { ipv6: true, endpoints6 } : {};
      // --- the generator's ceiling: plain routed path to an endpoint's own address
      {
        const lab = await e2eLabUp({ prefix: nextPrefix(), endpoints, udpPort: UDP_TARGET_PORT, tcpPort: TCP_TARGET_PORT, tun: false, ...labFamily });
        let agents: Record<Source, LoadAgent> | null = null;
        try {
          agents = await agentsFor(lab);
          const runner = new Runner(o, agents, family);
          for (const source of ['outside', 'pod'] as Source[]) {
            const t = await runner.traffic(source, v6 ? endpoints6[0] : endpoints[0], UDP_TARGET_PORT, TCP_TARGET_PORT, lab.responderPids);
            const c: CeilingRecord = {
              family,
              source,
              newFlowsPerSec: t.newFlows.perSec,
              newFlowRttP50Us: t.newFlowLatency.rttUs.p50,
              establishedReqPerSec: t.established.perSec,
              tcpConnectsPerSec: t.tcpConnect.perSec,
            };
            ceiling.push(c);
            log(`ceiling (${family}, ${source}, plain routed, no NAT): new ${c.newFlowsPerSec.toFixed(0)}/s (K=1 p50 ${c.newFlowRttP50Us} µs), established ${c.establishedReqPerSec.toFixed(0)}/s, tcp connects ${c.tcpConnectsPerSec.toFixed(0)}/s`);
          }
        } finally {
          if (agents) await Promise.all([agents.outside.stop(), agents.pod.stop()]);
          await lab.down();
        }
      }

      const sizes = [...o.sizes].sort((a, b) => a - b);
      for (const mode of o.modes) {
        if (!modesOf(family).includes(mode)) continue;
        const name = v6 ? `${mode} (ipv6)` : mode;
        let cappedAt: number | null = null;
        for (const n of sizes) {
          const rs = benchRuleSet(n, o.endpoints, family);
          const first = rs.services[0].clusterIP!;
          const last = rs.services[n - 1].clusterIP!;
          const cells: E2eRecord[] = [];
          for (const target of ['first', 'last'] as const) {
            for (const source of ['outside', 'pod'] as Source[]) cells.push(emptyRecord(mode, family, n, o.endpoints, target, target === 'first' ? first : last, source));
          }
          const mark = (status: E2eRecord['status'], note: string) => cells.forEach((c) => ((c.status = status), (c.note = note)));
          if (cappedAt !== null) {
            mark('skipped', `not run: loading ${cappedAt} services already exceeded the cap of ${o.cap} s`);
            results.push(...cells);
            log(`${name} N=${n}: skipped (the cap was exceeded at N=${cappedAt})`);
            continue;
          }
          log(`${name} N=${n}: lab, load...`);
          try {
            const r = await measureCell(o, mode, family, n, rs, endpoints, endpoints6, cells, work, nextPrefix(), ceiling);
            if (r === 'capped') cappedAt = n;
          } catch (e) {
            mark('failed', (e as Error).message.slice(0, 500));
            log(`${name} N=${n}: FAILED: ${(e as Error).message}`);
          }
          results.push(...cells);
          await writeOutputs(o, { ceiling, results, hasApi, t0 });
        }
      }
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    await cleanup();
    rmSync(work, { recursive: true, force: true });
  }
  return writeOutputs(o, { ceiling, results, hasApi, t0 });
}

async function measureCell(
  o: E2eOptions,
  mode: Mode,
  family: Family,
  n: number,
  rs: RuleSet,
  endpoints: string[],
  endpoints6: string[],
  cells: E2eRecord[],
  work: string,
  prefix: string,
  ceiling: CeilingRecord[],
): Promise<'ok' | 'capped'> {
  const log = o.log;
  const capMs = o.cap * 1000;
  const v6 = family === 'ipv6';
  const name = v6 ? `${mode} (ipv6)` : mode;
  const lab = await e2eLabUp({
    prefix,
    endpoints,
    udpPort: UDP_TARGET_PORT,
    tcpPort: TCP_TARGET_PORT,
    tun: mode === 'tunproxy',
    nodeSysctls: mode === 'tunproxy' ? {} : kernelSysctls(),
    ...(v6 ? { ipv6: true, endpoints6 } : {}),
  });
  let agents: Record<Source, LoadAgent> | null = null;
  let tp: TunproxyProc | null = null;
  const all = (f: (c: E2eRecord) => void) => cells.forEach(f);
  try {
    const extra = extraService(n, o.endpoints, family);
    const rsPlus: RuleSet = { ...rs, services: [...rs.services, extra] };
    // ---------------- load
    if (mode === 'tunproxy') {
      const dir = join(work, prefix);
      mkdirSync(dir, { recursive: true });
      const rulesFile = join(dir, 'rules.json');
      const initial = tunproxyHasApi() ? { ...rs, services: rs.services.slice(0, 1) } : rs;
      writeFileSync(rulesFile, JSON.stringify(initial));
      tp = new TunproxyProc({
        ns: lab.nodeNs,
        tun: TUN_NAME,
        rulesFile,
        stateDir: join(dir, 'state'),
        socket: join(dir, 'api.sock'),
        conntrackMax: TUNPROXY_CONNTRACK_MAX,
        cpuProfDir: o.tunproxyCpuProf,
      });
      await tp.waitFor(/; ready/, 120_000);
      let loadMs: number;
      let compileMs: number | null = null;
      if (tp.hasApi) {
        const body = JSON.stringify(rs);
        const a = await unixHttp(tp.o.socket, 'PUT', '/v1/ruleset', body, capMs);
        if (a.status !== 200) throw new Error(`PUT /v1/ruleset: ${a.status} ${a.body.slice(0, 300)}`);
        loadMs = a.ms;
        compileMs = (JSON.parse(a.body) as { compileMs?: number }).compileMs ?? null;
      } else {
        loadMs = await tp.reload(capMs);
        const m = /reloaded .* compiled in ([\d.]+) ms/.exec(tp.log.split('\n').filter((l) => l.includes('reloaded')).pop() ?? '');
        compileMs = m ? Number(m[1]) : null;
      }
      const rss = rssKiB(tp.pid);
      all((c) => ((c.loadMs = loadMs), (c.compileMs = compileMs), (c.memoryKiB = rss)));
      log(`${name} N=${n}: loaded in ${loadMs.toFixed(1)} ms (compile ${compileMs?.toFixed(1)} ms), RSS ${rss} KiB`);
    } else {
      const file = join(work, `${prefix}.rules`);
      const { text, argv } = kernelLoad(mode, family, rs, file);
      writeFileSync(file, text);
      const before = await kernelMemorySample();
      const t = await timedInNs(lab.nodeNs, argv, capMs);
      if (t.capped) {
        all((c) => ((c.status = 'skipped'), (c.note = `load exceeded the cap of ${o.cap} s (${argv[0]} killed)`)));
        log(`${name} N=${n}: load exceeded the cap of ${o.cap} s: killed, skipped`);
        return 'capped';
      }
      if (t.code !== 0) throw new Error(`${argv[0]} failed (exit ${t.code}): ${t.stderr.slice(0, 500)}`);
      const after = await kernelMemorySample();
      all((c) => ((c.loadMs = t.ms), (c.memoryKiB = after - before)));
      log(`${name} N=${n}: loaded in ${t.ms.toFixed(1)} ms, kernel memory +${after - before} KiB`);
    }

    // ---------------- traffic
    agents = await agentsFor(lab);
    const runner = new Runner(o, agents, family);
    const pinned = [...lab.responderPids, ...(tp ? [tp.pid] : [])];
    for (const c of cells) {
      let t: TrafficSet;
      try {
        t = await runner.traffic(c.source, c.targetAddress, UDP_PORT, TCP_PORT, pinned);
      } catch (e) {
        if (!(e instanceof NoAnswers)) throw e;
        c.status = 'failed';
        c.note = e.message + (mode === 'tunproxy' && v6 ? ' (does this tunproxy translate IPv6 yet?)' : '');
        log(`${name} N=${n} ${c.target}/${c.source}: FAILED: ${c.note}`);
        continue;
      }
      fill(c, t, ceiling.find((x) => x.source === c.source && x.family === family));
      log(
        `${name} N=${n} ${c.target}/${c.source}: new ${t.newFlows.perSec.toFixed(0)}/s (lost ${t.newFlows.lost}, K=1 p50 ${t.newFlowLatency.rttUs.p50} p99 ${t.newFlowLatency.rttUs.p99} µs), ` +
          `established ${t.established.perSec.toFixed(0)}/s, tcp ${t.tcpConnect.perSec.toFixed(0)}/s`,
      );
    }
    if (tp) {
      const rss = rssKiB(tp.pid);
      log(`${name} N=${n}: RSS after traffic ${rss} KiB`);
    }

    // ---------------- add one service
    const addCapped = (): 'ok' => {
      all((c) => (c.note = `adding one service exceeded the cap of ${o.cap} s (killed); the other figures stand`));
      log(`${name} N=${n}: adding one service exceeded the cap of ${o.cap} s: killed`);
      return 'ok';
    };
    let addMs: number;
    if (mode === 'tunproxy') {
      if (tp!.hasApi) {
        const a = await unixHttp(tp!.o.socket, 'PUT', `/v1/services/${extra.namespace}/${extra.name}`, JSON.stringify(extra), capMs);
        if (a.status !== 201 && a.status !== 200) throw new Error(`PUT /v1/services: ${a.status} ${a.body.slice(0, 300)}`);
        addMs = a.ms;
      } else {
        writeFileSync(tp!.o.rulesFile, JSON.stringify(rsPlus));
        addMs = await tp!.reload(capMs);
      }
    } else {
      const { text, argv } = kernelAdd(mode, family, rs, extra);
      const t = await timedInNs(lab.nodeNs, argv, capMs, text);
      if (t.capped) return addCapped();
      if (t.code !== 0) throw new Error(`${argv.join(' ')} (adding one service): ${t.stderr.slice(0, 300)}`);
      addMs = t.ms;
    }
    const check = await runner.load('outside', 'new', extra.clusterIP!, UDP_PORT, { count: 200, seconds: 3, warmupMs: 0, concurrency: 8 });
    all((c) => ((c.addServiceMs = addMs), (c.addedServiceAnswered = check.completed)));
    log(`${name} N=${n}: added one service in ${addMs.toFixed(1)} ms; ${check.completed}/200 requests to it answered`);
    return 'ok';
  } finally {
    if (agents) await Promise.all([agents.outside.stop(), agents.pod.stop()]);
    if (tp) await tp.stop();
    await lab.down();
  }
}

// ------------------------------------------------------------------ outputs

async function writeOutputs(o: E2eOptions, s: { ceiling: CeilingRecord[]; results: E2eRecord[]; hasApi: boolean; t0: number }): Promise<E2eReport> {
  const report: E2eReport = {
    benchmark: 'e2e',
    generatedAt: new Date().toISOString(),
    machine: machine(),
    command: `npm run bench:e2e -- ${process.argv.slice(2).join(' ')}`.trim(),
    options: { sizes: o.sizes, endpoints: o.endpoints, seconds: o.seconds, cap: o.cap, modes: o.modes, family: o.family ?? 'ipv4', concurrency: o.concurrency },
    tunproxyApi: s.hasApi,
    durationSeconds: Math.round((performance.now() - s.t0) / 100) / 10,
    ceiling: s.ceiling,
    results: s.results,
  };
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'e2e.json'), JSON.stringify(report, null, 2) + '\n');
  writeFileSync(join(o.out, 'e2e.md'), markdown(report));
  try {
    // the IPv4 charts as before; the IPv6 run's in <out>/ipv6/
    const fams = familiesOf(o.family ?? 'ipv4');
    if (fams.includes('ipv4')) await renderCharts({ ...report, results: report.results.filter((r) => r.family === 'ipv4') }, o.out);
    if (fams.includes('ipv6')) {
      mkdirSync(join(o.out, 'ipv6'), { recursive: true });
      await renderCharts({ ...report, results: report.results.filter((r) => r.family === 'ipv6') }, join(o.out, 'ipv6'));
    }
  } catch (e) {
    o.log(`charts not written: ${(e as Error).message}`);
  }
  return report;
}

const num = (x: number | null | undefined, d = 0): string =>
  x === null || x === undefined ? '—' : x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

/** (a row without `family` comes from a report of before the IPv6 run: IPv4) */
const familyOfRow = (r: { family?: Family }): Family => r.family ?? 'ipv4';

function cell(report: E2eReport, mode: Mode, n: number, target: 'first' | 'last', source: Source, family: Family = 'ipv4'): E2eRecord | undefined {
  return report.results.find((r) => r.mode === mode && r.services === n && r.target === target && r.source === source && familyOfRow(r) === family);
}

export interface Bar {
  bar: string;
  met: boolean | null;
  detail: string;
}

/** The issue's bars, checked on one report (null: a figure is missing). */
export function bars(report: E2eReport): Bar[] {
  const v = (mode: Mode, n: number, f: keyof E2eRecord, target: 'first' | 'last' = 'last', source: Source = 'outside', family: Family = 'ipv4') => {
    const c = cell(report, mode, n, target, source, family);
    const x = c && c.status === 'ok' ? (c[f] as number | null) : null;
    return typeof x === 'number' ? x : null;
  };
  const out: Bar[] = [];
  const ratio = (a: number | null, b: number | null) => (a !== null && b !== null && b > 0 ? a / b : null);
  {
    const tp = v('tunproxy', 20000, 'newFlowsPerSec');
    const l = v('iptables-legacy', 20000, 'newFlowsPerSec');
    const f = v('iptables-nft', 20000, 'newFlowsPerSec');
    const rl = ratio(tp, l);
    const rf = ratio(tp, f);
    out.push({ bar: '20 000 services, last: tunproxy new flows/s ≥ 10× iptables-legacy and ≥ 10× iptables-nft', met: rl === null || rf === null ? null : rl >= 10 && rf >= 10, detail: `tunproxy ${num(tp)}/s, legacy ${num(l)}/s (${num(rl, 1)}×), nft ${num(f)}/s (${num(rf, 1)}×)` });
  }
  {
    const tp = v('tunproxy', 5000, 'newFlowsPerSec');
    const l = v('iptables-legacy', 5000, 'newFlowsPerSec');
    out.push({ bar: '5 000 services, last: tunproxy new flows/s ≥ iptables-legacy', met: tp === null || l === null ? null : tp >= l, detail: `tunproxy ${num(tp)}/s, legacy ${num(l)}/s` });
  }
  {
    const a = v('tunproxy', 100000, 'newFlowsPerSec');
    const b = v('tunproxy', 100, 'newFlowsPerSec');
    const r = a !== null && b !== null ? Math.max(a, b) / Math.min(a, b) : null;
    out.push({ bar: 'tunproxy new flows/s at 100 000 within 1.25× of its rate at 100', met: r === null ? null : r <= 1.25, detail: `100: ${num(b)}/s, 100 000: ${num(a)}/s (${num(r, 2)}×)` });
  }
  {
    const tp = v('tunproxy', 10000, 'newFlowRttP50Us');
    const nf = v('nftables', 10000, 'newFlowRttP50Us');
    const r = ratio(tp, nf);
    out.push({ bar: 'tunproxy new-flow RTT p50 at 10 000 ≤ 1.5× nftables mode', met: r === null ? null : r <= 1.5, detail: `tunproxy ${num(tp, 1)} µs, nftables ${num(nf, 1)} µs (${num(r, 2)}×)` });
  }
  {
    const tp = v('tunproxy', 10000, 'loadMs', 'first');
    const l = v('iptables-legacy', 10000, 'loadMs', 'first');
    const nf = v('nftables', 10000, 'loadMs', 'first');
    const rl = ratio(l, tp);
    const rn = ratio(nf, tp);
    out.push({ bar: 'loading 10 000 services: tunproxy ≥ 20× faster than iptables-legacy-restore and ≥ 200× faster than nft -f', met: rl === null || rn === null ? null : rl >= 20 && rn >= 200, detail: `tunproxy ${num(tp, 1)} ms, legacy ${num(l, 0)} ms (${num(rl, 1)}×), nft ${num(nf, 0)} ms (${num(rn, 1)}×)` });
  }
  // the bars above are the IPv4 run's; issue 13's IPv6 bar is listed when the run has IPv6
  const fams = familiesOf(report.options.family ?? 'ipv4');
  if (!fams.includes('ipv4')) out.length = 0;
  if (fams.includes('ipv6')) {
    const tp = v('tunproxy', 20000, 'newFlowsPerSec', 'last', 'outside', 'ipv6');
    const l = v('ip6tables-legacy', 20000, 'newFlowsPerSec', 'last', 'outside', 'ipv6');
    const r = ratio(tp, l);
    out.push({ bar: 'IPv6, 20 000 services, last: tunproxy new flows/s ≥ 10× ip6tables-legacy', met: r === null ? null : r >= 10, detail: `tunproxy ${num(tp)}/s, ip6tables-legacy ${num(l)}/s (${num(r, 1)}×)` });
  }
  return out;
}

function markdown(r: E2eReport): string {
  const sizes = [...new Set(r.results.map((x) => x.services))].sort((a, b) => a - b);
  const families = familiesOf(r.options.family ?? 'ipv4');
  const L: string[] = [];
  L.push('# End to end: kube-proxy\'s rules in the kernel vs tunproxy', '');
  L.push(`One run on ${r.machine}. Command: \`${r.command}\`; it took ${num(r.durationSeconds / 60, 1)} min.`);
  L.push(
    `N UDP services (port ${UDP_PORT} → ${UDP_TARGET_PORT}), ${r.options.endpoints} endpoints each (on ${r.options.endpoints} pod namespaces shared by all services); ` +
      `the first and the last service of the chain order also have TCP ${TCP_PORT} → ${TCP_TARGET_PORT}. ` +
      `Load generator: scripts/loadgen.ts (raw sockets), closed loop with ${r.options.concurrency} requests in flight for ${r.options.seconds} s; ` +
      '"RTT" is measured one request at a time (K = 1), "loaded RTT" with K in flight. Endpoints answer with bench/e2e-responder.c (C, UDP echo).',
  );
  L.push(`tunproxy's API: ${r.tunproxyApi ? 'yes (PUT /v1/ruleset to load, PUT /v1/services/{ns}/{name} to add)' : 'absent in this tree: load and add are SIGHUP reloads of its --rules file'}.`, '');
  for (const family of families) {
    const v6 = family === 'ipv6';
    const modes = r.options.modes.filter((m) => modesOf(family).includes(m));
    const h = v6 ? '##' : '#';
    if (v6) {
      L.push('# IPv6', '');
      L.push(
        'The same measurements over IPv6: N single-stack IPv6 services (ClusterIPs from fd00:10:96::/108), IPv6 endpoints, every link of the lab dual-stack; ' +
          'kernel modes: ip6tables-legacy-restore of kube-proxy\'s IPv6 proxier\'s rules, `nft -f` of its `table ip6 kube-proxy`. A cell marked "failed" got no answer (see the notes below).',
        '',
      );
    }
    L.push(`#${h} The generator's ceiling (plain routed path to an endpoint, no NAT)`, '');
    L.push('| source | new flows/s | new-flow RTT p50 µs | established req/s | TCP connects/s |', '|---|---:|---:|---:|---:|');
    for (const c of r.ceiling.filter((x) => familyOfRow(x) === family)) L.push(`| ${c.source} | ${num(c.newFlowsPerSec)} | ${num(c.newFlowRttP50Us, 1)} | ${num(c.establishedReqPerSec)} | ${num(c.tcpConnectsPerSec)} |`);
    L.push('', 'A figure marked † is within 20 % of that ceiling: the generator may be what limits it.', '');

    const table = (title: string, f: (c: E2eRecord) => string, target: 'first' | 'last', source: Source) => {
      L.push(`##${h} ${title}`, '', `| services | ${modes.join(' | ')} |`, `|---:|${modes.map(() => '---:').join('|')}|`);
      for (const n of sizes) {
        L.push(
          `| ${num(n)} | ${modes
            .map((m) => {
              const c = cell(r, m, n, target, source, family);
              if (!c) return '';
              if (c.status !== 'ok') return c.status === 'skipped' ? 'skipped (cap)' : 'failed';
              return f(c);
            })
            .join(' | ')} |`,
        );
      }
      L.push('');
    };
    const dagger = (b: boolean) => (b ? ' †' : '');
    L.push(`#${h} Loading and changing the rule set`, '');
    table('Time to load the whole rule set (ms)', (c) => num(c.loadMs, c.loadMs !== null && c.loadMs < 100 ? 1 : 0), 'first', 'outside');
    table('Time to add one service to the loaded set (ms)', (c) => `${c.addServiceMs === null && c.note ? `> ${num(r.options.cap * 1000)} (cap)` : num(c.addServiceMs, 1)}${c.addedServiceAnswered !== null && c.addedServiceAnswered < 200 ? ` (${c.addedServiceAnswered}/200 answered)` : ''}`, 'first', 'outside');
    table('Memory (KiB): kernel Slab+Vmalloc+Percpu growth for the kernel modes, RSS for tunproxy', (c) => num(c.memoryKiB), 'first', 'outside');
    for (const source of ['outside', 'pod'] as Source[]) {
      const who = source === 'outside' ? 'from outside the pod CIDR (masquerade)' : 'from a client pod (no masquerade)';
      L.push(`#${h} Traffic ${who}`, '');
      for (const target of ['last', 'first'] as const) {
        table(`New flows/s, ${target} service`, (c) => `${num(c.newFlowsPerSec)}${dagger(c.nearCeiling.newFlows)}${c.newFlowLost ? ` (${c.newFlowLost} lost)` : ''}`, target, source);
        table(`New-flow RTT p50 / p99 (µs, one at a time), ${target} service`, (c) => `${num(c.newFlowRttP50Us, 1)} / ${num(c.newFlowRttP99Us, 1)}`, target, source);
      }
      table('New-flow RTT p50 / p99 under load (µs, K in flight), last service', (c) => `${num(c.newFlowLoadedRttP50Us, 0)} / ${num(c.newFlowLoadedRttP99Us, 0)}`, 'last', source);
      table('Established requests/s (one 5-tuple), last service', (c) => `${num(c.establishedReqPerSec)}${dagger(c.nearCeiling.established)}`, 'last', source);
      table('TCP connects/s (SYN → SYN-ACK), last service', (c) => `${num(c.tcpConnectsPerSec)}${dagger(c.nearCeiling.tcpConnect)} (p50 ${num(c.tcpConnectRttP50Us, 0)} µs)`, 'last', source);
    }
  }
  L.push('## Bars', '', '| bar | met | figures |', '|---|---|---|');
  for (const b of bars(r)) L.push(`| ${b.bar} | ${b.met === null ? 'not measured' : b.met ? 'yes' : '**no**'} | ${b.detail} |`);
  L.push('', '## Charts', '');
  for (const family of families) {
    const d = family === 'ipv6' ? 'ipv6/' : '';
    const w = family === 'ipv6' ? 'IPv6: ' : '';
    L.push(`![${w}new-flow RTT vs services](${d}e2e-new-flow-rtt.svg)`, '', `![${w}new flows/s vs services](${d}e2e-new-flows.svg)`, '', `![${w}load time vs services](${d}e2e-load-time.svg)`, '');
  }
  // one note per (mode, family, size), and every failed cell (a failure may be one target's or source's only)
  const notes = r.results.filter((x) => (x.status !== 'ok' || x.note) && ((x.target === 'first' && x.source === 'outside') || x.status === 'failed'));
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const x of notes) {
    const line = `- ${x.mode}${familyOfRow(x) === 'ipv6' ? ' (IPv6)' : ''}, ${num(x.services)} services${x.status === 'failed' ? `, ${x.target}/${x.source}` : ''}: ${x.status}: ${x.note}`;
    if (!seen.has(line)) lines.push(line);
    seen.add(line);
  }
  if (lines.length) L.push('## Skipped, failed and capped', '', ...lines, '');
  L.push(
    '## Method notes',
    '',
    '- Each (mode, N) gets a fresh lab: no netfilter hook, conntrack entry or TUN of one mode is present while another is measured.',
    '- Kernel modes: the node namespace\'s UDP conntrack timeout is 2 s (TCP CLOSE 2 s) so that the millions of one-request flows do not exhaust the masquerade source ports (64 k per endpoint) within a run; tunproxy runs with --conntrack-max ' + TUNPROXY_CONNTRACK_MAX + ' for the same reason (its table evicts the oldest flows when full).',
    '- Kernel memory is a difference of global counters (/proc/meminfo) on a shared machine: small values are noise.',
    '- Load times are wall times of the command (kernel modes) or of the API request (tunproxy, which is already running).',
    '',
  );
  return L.join('\n');
}

// ------------------------------------------------------------------ CLI

function parseCli(argv: string[]): E2eOptions {
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`--${name} needs a value`);
    return v;
  };
  const positive = (name: string, def: number): number => {
    const v = get(name);
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: "${v}" is not a positive number`);
    return n;
  };
  const sizesText = get('sizes');
  const sizes = sizesText
    ? sizesText.split(',').map((x) => {
        const n = Number(x.trim());
        if (!Number.isInteger(n) || n < 2) throw new Error(`--sizes: "${x}" is not a whole number of services ≥ 2`);
        return n;
      })
    : DEFAULT_SIZES;
  const familyText = get('family') ?? 'ipv4';
  if (!['ipv4', 'ipv6', 'both'].includes(familyText)) throw new Error(`--family: "${familyText}" is not ipv4, ipv6 or both`);
  const family = familyText as FamilyOption;
  const families = familiesOf(family);
  const modesText = get('modes');
  const modes = modesText
    ? modesText.split(',').map((m) => {
        if (!(ALL_MODES as readonly string[]).includes(m.trim())) throw new Error(`--modes: "${m}" is not one of ${ALL_MODES.join(', ')}`);
        return m.trim() as Mode;
      })
    : ALL_MODES.filter((m) => families.some((f) => modesOf(f).includes(m)));
  for (const f of families) {
    if (!modes.some((m) => modesOf(f).includes(m))) throw new Error(`--modes: none of ${modes.join(', ')} runs in ${f} (its modes: ${modesOf(f).join(', ')})`);
  }
  const endpoints = positive('endpoints', 3);
  if (!Number.isInteger(endpoints) || endpoints > 64) throw new Error('--endpoints must be a whole number 1-64');
  const concurrency = positive('concurrency', 32);
  return {
    sizes,
    endpoints,
    seconds: positive('seconds', 5),
    cap: positive('cap', 180),
    modes,
    family,
    concurrency,
    out: get('out') ?? RESULTS_DIR,
    prefix: `tp-b${process.pid}`,
    tunproxyCpuProf: get('tunproxy-cpu-prof'),
    log: (l) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${l}`),
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:e2e needs root: network namespaces, iptables/nftables and raw sockets');
  const o = parseCli(process.argv.slice(2));
  const report = await runE2e(o);
  console.log(markdown(report));
  console.log(`written: ${join(o.out, 'e2e.json')}, ${join(o.out, 'e2e.md')}, charts in ${o.out} (${report.durationSeconds} s)`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(`bench:e2e: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}
