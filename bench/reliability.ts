/**
 * npm run bench:reliability [-- --quick] [-- --only a,b]
 *
 * The soak and fault suite: does the packet path keep moving, and do
 * connections outlive the process, while the control side works, while the
 * process is restarted or killed, under a new-flow flood, over a long mixed
 * run, and under malformed packets? One lab of network namespaces (client,
 * node with tunproxy on its TUN, pods); every scenario runs its own
 * `tunproxy run` (own state and pin directories) and carries
 *   - a steady stream of sequence-numbered UDP datagrams through a masqueraded
 *     ClusterIP to one pod (bench/tools/udpgen.c --seq, paced in 1 ms batches),
 *     counted at the pod by bench/tools/seqsink.c: lost, duplicated, the
 *     longest gap between two arrivals; decoy sinks on the other pods (which
 *     are also the endpoints of every filler service) count datagrams that went
 *     to the wrong place (misdelivered);
 *   - established TCP connections exchanging data: HTTP keep-alive requests one
 *     after the other on each (scripts/netclient.ts streams); a connection
 *     survived when it is still open, saw no error, answered after the event
 *     and kept its endpoint and its masquerade port (the same connection).
 *
 * Scenarios (names and fields as issue 9 asks; a field that does not apply is null):
 *   put-100k           a full PUT /v1/ruleset of 100 000 services replacing every
 *                      other service (A → B), the stream at 50 % of the forwarded
 *                      rate bench:tun measured (bench/results/tun.json, when
 *                      its `cpu` is this machine's: else the run stops at once
 *                      and says to run bench:tun here first)
 *   import-100k        POST /v1/import/iptables?apply=true of kube-proxy's iptables-save
 *                      for 100 000 services
 *   conntrack-list-1m  `tunproxy conntrack -L` of a 1 000 000-flow table (the table is a
 *                      pinned table file generated before the start and recovered by
 *                      tunproxy: 1 000 000 assured UDP flows of the flood service)
 *   state-save         one service added to a 100 000-service rule set (an incremental
 *                      apply, answered once its line is synced to the state directory's
 *                      journal), then the whole rule set written to the state file when
 *                      the journal is folded in (5 s later), waited for until the new
 *                      generation is on disk
 *   swaps-1000         1 000 rule-set swaps (PUT /v1/ruleset, one service toggled) at >= 10 000 pkt/s
 *   restart-sigterm    SIGTERM with 1 000 established connections, restarted at once
 *   restart-kill9      kill -9 with 1 000 established connections, restarted at once
 *                      by the harness as a service manager would; time to ready.
 *                      Both with `tunproxy tun-holder` holding the TUN (run --tun-holder):
 *                      the restart's datagrams wait in the device queue, so `lost` is
 *                      measured with queuing (without a holder Linux drops them)
 *   conntrack-flood    a new-flow flood of twice --conntrack-max while 100 connections
 *                      exchange data; the stream is the established traffic
 *   soak-10min         10 minutes of new flows, established flows and a swap a second;
 *                      RSS growth after warm-up
 *   fuzz-1m            1 000 000 malformed packets (bench/tools/fuzzgen.c) while real traffic flows
 *   baseline           no event: the stream and the connections alone (the floor of the gaps);
 *                      an eleventh scenario with the same fields, after the ten of the issue
 *
 * --quick (or RELIABILITY_QUICK=1): every scenario in seconds (smaller counts, said in
 * the .md), for CI. Results: bench/results/reliability.{json,md} (a quick run writes
 * reliability-quick.{json,md}); --out NAME and --out-dir DIR change that. --only a,b runs
 * only the scenarios named; --pps N runs every stream at N pkt/s, --baseline-seconds N the
 * baseline that long (both for a look at one scenario, not the benchmark). About 25 minutes in full (the soak is 10 of them), a minute quick.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { labDown, labUp } from '../scripts/lab.ts';
import type { Lab } from '../scripts/lab.ts';
import { netnsUnavailableReason } from '../scripts/ns.ts';
import { NetClient, ROOT, TUNPROXY_BIN, TunproxyProcess, buildCTool, jsonResult, stopAllChildren, stopChild } from '../scripts/harness.ts';
import { ApiClient } from '../control/client.ts';
import type { memoryOf } from '../control/api/observe.ts';
import type { ThreadHeap } from '../control/worker/packet-side.ts';
import type { RuleSet, Service } from '../control/types.ts';
import { writeIptables } from '../control/iptables/writer.ts';
import { syntheticRuleSet } from './gen.ts';
import { fmt, machine, RESULTS_DIR } from './common.ts';
import { PinnedTable } from '../dataplane/conntrack-pinned.ts';
import { parseIPv4, PROTO_UDP } from '../dataplane/addr.ts';
import { CT_DIR_ORIGINAL, CT_DIR_REPLY } from '../dataplane/conntrack.ts';

// ------------------------------------------------------------------ configuration

const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick') || process.env.RELIABILITY_QUICK === '1';
const argStr = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const ONLY = argStr('only')?.split(',').map((s) => s.trim()).filter(Boolean) ?? null;
const OUT = argStr('out') ?? (QUICK ? 'reliability-quick' : 'reliability');
const OUT_DIR = argStr('out-dir') ?? RESULTS_DIR;
/** --pps N: every scenario's stream at N pkt/s (for a look at one scenario; not the benchmark) */
const PPS = argStr('pps') !== undefined ? Number(argStr('pps')) : null;
/**
 * --node-args "A B": node's options for tunproxy (default --no-memory-reducer: V8's memory reducer
 * otherwise compacts the packet thread's heap once, ~8 s after the start, a 5–20 ms pause; not
 * --single-threaded-gc, which lost datagrams in put-100k at 200 000 pkt/s: README "Packets that
 * never wait"); --tp-log FILE: tunproxy's output kept in FILE.<scenario> (diagnostics)
 */
const NODE_ARGS = argStr('node-args') !== undefined ? argStr('node-args')!.split(' ').filter(Boolean) : ['--no-memory-reducer'];
const TP_LOG = argStr('tp-log');
/** --baseline-seconds N: how long the baseline's stream runs alone */
const BASELINE_SECONDS = argStr('baseline-seconds') !== undefined ? Number(argStr('baseline-seconds')) : null;

export const SCENARIOS = ['put-100k', 'import-100k', 'conntrack-list-1m', 'state-save', 'swaps-1000', 'restart-sigterm', 'restart-kill9', 'conntrack-flood', 'soak-10min', 'fuzz-1m', 'baseline'] as const;
type ScenarioName = (typeof SCENARIOS)[number];

/**
 * put-100k's stream is half of the forwarded rate bench:tun measured on this
 * machine: bench/results/tun.json's tunproxyPps, taken only when its `cpu`
 * is this machine's (a figure from another machine can be far beyond what
 * this one forwards: the stream then loses packets whatever the PUT does).
 * `mismatch` says why the file cannot be used.
 */
function tunForwardedPps(): { pps: number; from: string; mismatch: string | null } {
  const here = cpus()[0]?.model ?? 'cpu';
  try {
    const j = JSON.parse(readFileSync(join(RESULTS_DIR, 'tun.json'), 'utf8')) as { tunproxyPps?: number; cpu?: string | null };
    if (typeof j.tunproxyPps === 'number' && j.tunproxyPps > 0) {
      const from = `bench/results/tun.json tunproxyPps, measured on ${j.cpu ?? 'an unrecorded CPU'}`;
      const mismatch = j.cpu === here ? null : `bench/results/tun.json was measured on ${j.cpu ? `another CPU (${j.cpu})` : 'a CPU it does not record'}, not this machine's ${here}: put-100k's stream is half of what bench:tun forwards here. Run \`npm run bench:tun\` on this machine first (or give --pps N for a look at one scenario)`;
      return { pps: j.tunproxyPps, from, mismatch };
    }
  } catch {
    /* below */
  }
  return { pps: 40000, from: 'no bench/results/tun.json: 40 000 assumed', mismatch: `bench/results/tun.json is missing: put-100k's stream is half of what bench:tun forwards here. Run \`npm run bench:tun\` first (or give --pps N for a look at one scenario)` };
}
const TUN = tunForwardedPps();

const C = QUICK
  ? { baselineSeconds: BASELINE_SECONDS ?? 2, services: 2000, putPps: 5000, streamPps: 3000, listFlows: 20000, swaps: 50, swapPps: 5000, restartConnections: 50, connections: 20, floodMax: 5000, floodRate: 20000, soakSeconds: 6, soakNewFlowRate: 500, fuzzCount: 20000, fuzzRate: 10000, leadInMs: 800, tailMs: 800 }
  : { baselineSeconds: BASELINE_SECONDS ?? 10, services: 100000, putPps: Math.round(TUN.pps / 2), streamPps: 10000, listFlows: 1000000, swaps: 1000, swapPps: 10000, restartConnections: 1000, connections: 100, floodMax: 50000, floodRate: 50000, soakSeconds: 600, soakNewFlowRate: 2000, fuzzCount: 1000000, fuzzRate: 50000, leadInMs: 2000, tailMs: 2000 };

// ------------------------------------------------------------------ the lab

const NODE = '172.16.20.1';
const MASQ = '10.64.20.1';
const SINK_POD = '10.64.20.13';
const WEB_PODS = ['10.64.20.14', '10.64.20.15'];
const FLOOD_POD = '10.64.20.16';
const VIP_STREAM = '10.32.20.10';
const VIP_WEB = '10.32.20.20';
const VIP_FLOOD = '10.32.20.30';
const VIP_TOGGLE = '10.32.20.40';
const STREAM_PORT = 9000;
const FLOOD_PORT = 7;
const TUN_NAME = 'tun0';

const baseServices = (): Service[] => [
  { namespace: 'default', name: 'stream', clusterIP: VIP_STREAM, ports: [{ name: 'udp', protocol: 'UDP', port: STREAM_PORT, targetPort: STREAM_PORT }], endpoints: [{ address: SINK_POD }] },
  { namespace: 'default', name: 'web', clusterIP: VIP_WEB, ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], endpoints: WEB_PODS.map((address) => ({ address })) },
  { namespace: 'default', name: 'flood', clusterIP: VIP_FLOOD, ports: [{ name: 'udp', protocol: 'UDP', port: FLOOD_PORT, targetPort: FLOOD_PORT }], endpoints: [{ address: FLOOD_POD }] },
];
const node = { name: 'node-reliability', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.0.0/16' };
const baseRuleSet = (): RuleSet => ({ apiVersion: 'tunproxy.dev/v1', node, services: baseServices() });
const toggled = (): RuleSet => ({
  apiVersion: 'tunproxy.dev/v1',
  node,
  services: [...baseServices(), { namespace: 'default', name: 'toggle', clusterIP: VIP_TOGGLE, ports: [{ name: 'udp', protocol: 'UDP', port: 53, targetPort: 53 }], endpoints: [{ address: WEB_PODS[0] }] }],
});

/**
 * n services: the three base services plus n - 3 fillers whose endpoint is a decoy pod on the
 * stream's port (a stream datagram sent to a filler's endpoint is counted as misdelivered).
 * Variant 'a' and 'b' share no filler: a PUT from one to the other replaces every filler.
 */
function bigRuleSet(n: number, variant: 'a' | 'b'): RuleSet {
  const rs = syntheticRuleSet(n - 3, {
    endpoints: 1,
    pods: 1,
    podBase: WEB_PODS[1],
    protocol: 'UDP',
    port: STREAM_PORT,
    targetPort: STREAM_PORT,
    nodePorts: 0,
    clusterIPBase: variant === 'a' ? '10.96.0.10' : '10.100.0.10',
  });
  for (const s of rs.services) s.name = `${variant}-${s.name}`;
  return { apiVersion: 'tunproxy.dev/v1', node, services: [...baseServices(), ...rs.services] };
}

const GEN = buildCTool('udpgen');
const SEQSINK = buildCTool('seqsink');
const FUZZGEN = buildCTool('fuzzgen');
/** the machine's own stalls: a SCHED_FIFO 99 thread on every CPU, waking every ms (bench/tools/stallprobe.c) */
const STALLPROBE = buildCTool('stallprobe');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (m: string) => process.stderr.write(`reliability: ${m}\n`);

/**
 * The instruments: senders and sinks of streams up to 50 000 pkt/s at SCHED_FIFO 20, faster ones at
 * nice -10: on a shared machine a sender that is not scheduled makes gaps of its own, which are not
 * the dataplane's (measured: up to 86 ms at the default priority, 58 ms at nice -10 under a load of
 * 12); not SCHED_FIFO at 200 000 pkt/s: a real-time sender took most of a core and starved the
 * control worker (a PUT took 200 s), a real-time sink, woken for every datagram, held the sender to
 * 40 000 pkt/s. --no-instr-rt: all at the default priority. Either way the sender's own longest
 * pause is reported beside the gaps.
 */
const INSTR_RT = !argv.includes('--no-instr-rt');
/**
 * tunproxy's own options for every scenario: the packet thread at SCHED_FIFO 10 on the last CPU, the
 * control worker on the others, and a TUN queue of 10 000 packets (README "Packets that never wait").
 * --tp-args "..." replaces them ("" : tunproxy's defaults).
 */
const TP_ARGS =
  argStr('tp-args') !== undefined
    ? argStr('tp-args')!.split(' ').filter(Boolean)
    : ['--packet-priority', 'fifo:10', ...(availableParallelism() > 1 ? ['--packet-cpu', String(availableParallelism() - 1)] : []), '--txqueuelen', '10000'];

/**
 * The CPUs the senders and sinks run on: every CPU but tunproxy's packet CPU (--packet-cpu in
 * TP_ARGS), as tunproxy keeps its own other threads off it. On the packet thread's CPU a sink
 * (nice -10 above 50 000 pkt/s) waits behind the SCHED_FIFO packet thread, which holds that CPU
 * through a full PUT: measured in put-100k at 164 000 pkt/s, 6 450 datagrams lost at the sink's
 * full socket (Udp RcvbufErrors) while the kernel had delivered each within 16.7 ms. null: no
 * packet CPU, the scheduler places them.
 */
const INSTR_CPUS = ((): string | null => {
  const i = TP_ARGS.indexOf('--packet-cpu');
  if (i < 0) return null;
  const packetCpu = Number(TP_ARGS[i + 1]);
  const others = Array.from({ length: availableParallelism() }, (_, c) => c).filter((c) => c !== packetCpu);
  return others.length > 0 ? others.join(',') : null;
})();

function spawnIn(ns: string, cmd: string[]): ChildProcess {
  const rate = cmd.includes('--rate') ? Number(cmd[cmd.indexOf('--rate') + 1]) : Infinity;
  const sender = cmd[0] === GEN || cmd[0] === FUZZGEN;
  // a sink's rate: the running scenario's stream's
  const r = sender ? rate : cmd[0] === SEQSINK ? STREAM_RATE.pps : Infinity;
  const instrument = sender || cmd[0] === SEQSINK;
  const pre = [
    ...(instrument && INSTR_CPUS !== null ? ['taskset', '-c', INSTR_CPUS] : []),
    ...(!INSTR_RT || !instrument ? [] : r <= 50_000 ? ['chrt', '-f', '20'] : ['nice', '-n', '-10']),
  ];
  const c = spawn('ip', ['netns', 'exec', ns, ...pre, ...cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
  extra.add(c);
  c.on('exit', () => extra.delete(c));
  return c;
}
const extra = new Set<ChildProcess>();
/** the running scenario's stream rate (the sinks' priority follows it) */
const STREAM_RATE = { pps: 0 };

/** A C tool that prints "ready" (optionally) and one JSON line at the end. */
function jsonTool<T>(ns: string, cmd: string[], waitReady: boolean): { child: ChildProcess; ready: Promise<void>; result: Promise<T> } {
  return jsonResult<T>(spawnIn(ns, cmd), cmd[0], waitReady);
}

interface SinkResult {
  received: number;
  distinct: number;
  duplicates: number;
  foreign: number;
  maxSeq: number;
  maxGapMs: number;
  maxGapAtMs: number;
  firstAtMs: number;
  lastAtMs: number;
  gapsOver5ms: number;
  /** how far apart the two datagrams around the longest gap were sent */
  maxGapSendMs: number;
  /** the longest time from send to arrival */
  maxDelayMs: number;
  delaysOver5ms: number;
  /** the sink's own longest time between two wake-ups */
  maxWakeGapMs: number;
  /** the same figures before the event (SIGUSR1): the floor with no event */
  lead: { maxGapMs: number; gapsOver5ms: number; maxDelayMs: number; received: number } | null;
}
interface ProbeResult {
  cpus: Array<{ cpu: number; wakeups: number; maxLateMs: number; over2ms: number; over5ms: number }>;
  /** [cpu, CLOCK_REALTIME ms the wake-up was due, how late it came (ms)] */
  stalls: Array<[number, number, number]>;
}
interface GenResult {
  sent: number;
  seconds: number;
  pps: number;
  errors: number;
  firstError: string;
  maxSendGapMs: number;
}

interface StreamStatus {
  requests: number;
  responses: number;
  endpoints: Record<string, number>;
  clients: Record<string, number>;
  errors: string[];
  closed: boolean;
}

export interface ScenarioResult {
  name: ScenarioName;
  streamPps: number | null;
  sent: number | null;
  lost: number | null;
  duplicated: number | null;
  misdelivered: number | null;
  maxGapMs: number | null;
  connections: number | null;
  connectionsSurvived: number | null;
  establishedDeliveredRatio: number | null;
  rssGrowthRatio: number | null;
  crashes: number | null;
  readyAfterMs: number | null;
}

interface Detail {
  name: ScenarioName;
  what: string;
  notes: string[];
  error?: string;
  /** the longest gap before the event (the floor at this rate), and the longest send-to-arrival delay of the run */
  floorGapMs?: number | null;
  maxDelayMs?: number;
  /** the machine's longest stall during the stream (stallprobe: a SCHED_FIFO 99 thread woken that late on some CPU) */
  machineStallMs?: number | null;
}

// ------------------------------------------------------------------ one scenario

interface Ctx {
  lab: Lab;
  client: NetClient;
  tp: TunproxyProcess;
  api: ApiClient;
  dir: string;
  notes: string[];
  /** set by an action that stops tunproxy on purpose */
  intended: boolean;
  result: Partial<ScenarioResult>;
  start: (extraArgs?: string[]) => Promise<TunproxyProcess>;
}

interface ScenarioSpec {
  name: ScenarioName;
  what: string;
  pps: number;
  connections: number;
  /** the rule set file tunproxy starts with */
  rules: RuleSet;
  args?: string[];
  /** before tunproxy starts (e.g. write a pinned table) */
  before?: (dir: string, pinDir: string) => Promise<void> | void;
  action: (ctx: Ctx) => Promise<void>;
  /** the stream is the established traffic: report its delivered ratio */
  establishedRatio?: boolean;
  /**
   * run a `tunproxy tun-holder` in the node namespace for the scenario, and every tunproxy with
   * --tun-holder: the TUN stays attached across restarts, its queue keeps what arrives meanwhile
   */
  holder?: boolean;
}

/** --txqueuelen of TP_ARGS (the holder's queue is the same), else 10 000 */
const holderQueue = (): number => {
  const i = TP_ARGS.indexOf('--txqueuelen');
  return i >= 0 && Number(TP_ARGS[i + 1]) > 0 ? Number(TP_ARGS[i + 1]) : 10000;
};

/** `tunproxy tun-holder` in ns serving on sock; resolves once it said ready (its lines kept). */
async function startHolder(ns: string, sock: string): Promise<{ child: ChildProcess; lines: string[] }> {
  const child = spawnIn(ns, [process.execPath, TUNPROXY_BIN, 'tun-holder', '--tun', TUN_NAME, '--socket', sock, '--txqueuelen', String(holderQueue())]);
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stderr! }).on('line', (l) => {
      lines.push(l);
      if (/; ready$/.test(l)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`tun-holder exited (${code}): ${lines.join(' | ')}`)));
  });
  return { child, lines };
}

/** Where a stream's datagrams can be dropped on this machine, as counters read before and after it. */
interface Drops {
  /** the TUN device's queue full (tun0's tx_dropped: the kernel could not hand the datagram to tunproxy) */
  tunQueue: number | null;
  /** tunproxy: packets it dropped (its drop counters) and writes the device refused (loop txDropped), with its pid (a restart resets them) */
  tunproxy: { drops: number; txDropped: number; pid: number } | null;
  /** the sink pod's UDP sockets full (Udp RcvbufErrors of its namespace) */
  podSocket: number | null;
  /** naps of tunproxy's packet thread (--packet-nap) and their time (ms) */
  naps: { naps: number; napMs: number } | null;
}

async function dropCounters(lab: Lab, tp: TunproxyProcess | null, api: ApiClient): Promise<Drops> {
  const cat = (ns: string, path: string): string | null => {
    const r = spawnSync('ip', ['netns', 'exec', ns, 'cat', path], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout : null;
  };
  const q = cat(lab.node.ns, `/sys/class/net/${TUN_NAME}/statistics/tx_dropped`);
  const snmp = cat(lab.podFor(SINK_POD).ns, '/proc/net/snmp');
  let podSocket: number | null = null;
  if (snmp !== null) {
    const udp = snmp.split('\n').filter((l) => l.startsWith('Udp: '));
    const i = udp[0]?.split(' ').indexOf('RcvbufErrors') ?? -1;
    if (udp.length >= 2 && i > 0) podSocket = Number(udp[1].split(' ')[i]);
  }
  let tunproxy: Drops['tunproxy'] = null;
  let naps: Drops['naps'] = null;
  if (tp?.running) {
    type Stats = { counters?: { drops?: Record<string, number> }; loop?: { txDropped?: number } | null; packetThread?: { eventLoopDelay?: { naps?: number; napMs?: number } } };
    const st = (await api.call<Stats>('GET', '/v1/stats').catch(() => null))?.body;
    if (st?.counters?.drops) tunproxy = { drops: Object.values(st.counters.drops).reduce((a, b) => a + b, 0), txDropped: st.loop?.txDropped ?? 0, pid: tp.pid };
    const el = st?.packetThread?.eventLoopDelay;
    if (el?.naps !== undefined) naps = { naps: el.naps, napMs: el.napMs ?? 0 };
  }
  return { tunQueue: q === null ? null : Number(q.trim()), tunproxy, podSocket, naps };
}

/** The lost datagrams by where the counters saw them go (a note). */
function whereLost(lost: number, a: Drops, b: Drops): string {
  const parts: string[] = [];
  let known = 0;
  const add = (n: number | null, what: string) => {
    if (n === null) return parts.push(`${what}: not known`);
    known += n;
    parts.push(`${fmt(n)} ${what}`);
  };
  add(a.tunQueue !== null && b.tunQueue !== null ? b.tunQueue - a.tunQueue : null, "in the TUN's full queue (tx_dropped, all traffic)");
  const same = a.tunproxy !== null && b.tunproxy !== null && a.tunproxy.pid === b.tunproxy.pid;
  add(same ? b.tunproxy!.drops - a.tunproxy!.drops + b.tunproxy!.txDropped - a.tunproxy!.txDropped : null, 'by tunproxy (its drop counters and refused writes, all traffic)');
  add(a.podSocket !== null && b.podSocket !== null ? b.podSocket - a.podSocket : null, "at the sink pod's full sockets (Udp RcvbufErrors)");
  return `where the ${fmt(lost)} lost went: ${parts.join(', ')}${known < lost ? `; ${fmt(lost - known)} not counted by any of them` : ''}`;
}

/** The probe's stalls during the stream, and the ones the stream's longest gap overlapped (a note). */
function machineStalls(p: ProbeResult, main: SinkResult): { maxMs: number; note: string } {
  const worst = p.cpus.reduce((w, c) => (c.maxLateMs > w.maxLateMs ? c : w), p.cpus[0]);
  const over5 = p.cpus.map((c) => `CPU ${c.cpu} ${c.over5ms}`).join(', ');
  const gapEnd = main.firstAtMs + main.maxGapAtMs;
  const gapStart = gapEnd - main.maxGapMs;
  const during = p.stalls.filter(([, at, late]) => at < gapEnd && at + late > gapStart);
  const inGap = during.length === 0 ? 'no stall of the machine (≥ 2 ms) during the longest gap' : `during the longest gap the machine stalled: ${during.map(([cpu, , late]) => `${late.toFixed(1)} ms on CPU ${cpu}`).join(', ')}`;
  return {
    maxMs: Math.round(worst.maxLateMs * 100) / 100,
    note: `the machine itself (bench/tools/stallprobe.c: a SCHED_FIFO 99 thread on every CPU, woken every ms): longest stall ${worst.maxLateMs.toFixed(1)} ms on CPU ${worst.cpu}; wake-ups over 5 ms late: ${over5}; ${inGap}`,
  };
}

let runId = 0;
/** the directories of the scenario under way (its state directory, its pinned tables in /dev/shm), removed by cleanup() on a signal */
const scenarioDirs = new Set<string>();
async function runScenario(lab: Lab, client: NetClient, spec: ScenarioSpec): Promise<{ result: ScenarioResult; detail: Detail }> {
  const notes: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), `tp-rel-${spec.name}-`));
  const pinDir = join('/dev/shm', `tp-rel-${process.pid}-${++runId}`);
  scenarioDirs.add(dir).add(pinDir);
  const rulesFile = join(dir, 'rules.json');
  writeFileSync(rulesFile, JSON.stringify(spec.rules));
  const stateDir = join(dir, 'state');
  const socket = join(dir, 'api.sock');
  const holderSock = join(dir, 'holder.sock');
  const args = ['--max-body', String(2 ** 30), ...TP_ARGS, ...(spec.args ?? []), ...(spec.holder ? ['--tun-holder', holderSock] : [])];
  const start = (more: string[] = []) =>
    TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, nodeArgs: NODE_ARGS, rules: rulesFile, stateDir, socket, pinDir, args: [...args, ...more], readyTimeoutMs: 300_000 });
  const empty: ScenarioResult = {
    name: spec.name, streamPps: null, sent: null, lost: null, duplicated: null, misdelivered: null, maxGapMs: null,
    connections: null, connectionsSurvived: null, establishedDeliveredRatio: null, rssGrowthRatio: null, crashes: null, readyAfterMs: null,
  };
  const streams: string[] = [];
  let tp: TunproxyProcess | null = null;
  const sinks: Array<ReturnType<typeof jsonTool<SinkResult>>> = [];
  let gen: ReturnType<typeof jsonTool<GenResult>> | null = null;
  let probe: ReturnType<typeof jsonTool<ProbeResult>> | null = null;
  let holder: Awaited<ReturnType<typeof startHolder>> | null = null;
  try {
    if (spec.before) await spec.before(dir, pinDir);
    if (spec.holder) {
      holder = await startHolder(lab.node.ns, holderSock);
      notes.push(`tunproxy tun-holder holds ${TUN_NAME} (queue ${fmt(holderQueue())} packets); every tunproxy run takes its fd (--tun-holder)`);
    }
    const t0 = performance.now();
    tp = await start();
    notes.push(`tunproxy ready in ${fmt(performance.now() - t0)} ms`);
    const ctx: Ctx = { lab, client, tp, api: new ApiClient({ socket, timeoutMs: 600_000 }), dir, notes, intended: false, result: {}, start };

    // established connections, each answering before anything else happens
    const interval = Math.max(50, spec.connections);
    for (let i = 0; i < spec.connections; i++) {
      const name = `${spec.name}-${i}`;
      await client.call('stream.start', { name, to: `${VIP_WEB}:80`, intervalMs: interval });
      streams.push(name);
    }
    const statuses = async (): Promise<StreamStatus[]> => Promise.all(streams.map((name) => client.call('stream.status', { name }) as Promise<StreamStatus>));
    const waitProgress = async (base: StreamStatus[] | null, more: number, timeoutMs: number): Promise<StreamStatus[]> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = await statuses();
        if (s.every((x, i) => x.closed || x.responses >= (base ? base[i].responses : 0) + more) || Date.now() > deadline) return s;
        await sleep(250);
      }
    };
    const first = await waitProgress(null, 1, 30_000 + spec.connections * 20);
    const open = first.filter((s) => s.responses >= 1 && !s.closed).length;
    if (open < spec.connections) notes.push(`${spec.connections - open} of ${spec.connections} connections did not answer before the event`);

    // the stream: sink at the endpoint, decoys at the other pods
    STREAM_RATE.pps = spec.pps;
    const expect = Math.ceil(spec.pps * 4000) + 1_000_000;
    sinks.push(jsonTool<SinkResult>(lab.podFor(SINK_POD).ns, [SEQSINK, '--bind', SINK_POD, '--port', String(STREAM_PORT), '--expect', String(Math.min(expect, 2 ** 28))], true));
    for (const p of WEB_PODS) sinks.push(jsonTool<SinkResult>(lab.podFor(p).ns, [SEQSINK, '--bind', p, '--port', String(STREAM_PORT), '--expect', '1'], true));
    await Promise.all(sinks.map((s) => s.ready));
    probe = jsonTool<ProbeResult>(lab.node.ns, [STALLPROBE], true);
    await probe.ready;
    const drops0 = await dropCounters(lab, ctx.tp, ctx.api);
    gen = jsonTool<GenResult>(lab.client.ns, [GEN, '--dst', VIP_STREAM, '--dport', String(STREAM_PORT), '--seq', '--size', '64', '--rate', String(spec.pps), '--duration', '100000', '--flows', '1'], false);
    await sleep(C.leadInMs);
    const before = await statuses();
    // the sink marks the event's start: what it saw before is the floor (no event) at this rate
    sinks[0].child.kill('SIGUSR1');
    const a0 = performance.now();
    await spec.action(ctx);
    notes.push(`the event took ${fmt(performance.now() - a0)} ms`);
    tp = ctx.tp;
    await sleep(C.tailMs);
    if (tp.running) {
      const el = (await ctx.api.call<{ packetThread?: { eventLoopDelay: { maxMs: number; p99Ms: number } } }>('GET', '/v1/stats').catch(() => null))?.body.packetThread?.eventLoopDelay;
      if (el) notes.push(`the packet thread's event loop (since start): longest delay ${el.maxMs.toFixed(1)} ms, p99 ${el.p99Ms.toFixed(2)} ms`);
    }
    if (TP_LOG !== undefined) writeFileSync(`${TP_LOG}.${spec.name}`, tp.lines.join('\n') + '\n');
    gen.child.kill('SIGTERM');
    const g = await gen.result;
    await sleep(500);
    probe.child.kill('SIGTERM');
    const drops1 = await dropCounters(lab, tp, ctx.api);
    for (const s of sinks) s.child.kill('SIGTERM');
    const [main, ...decoys] = await Promise.all(sinks.map((s) => s.result));
    const pr = await probe.result.catch(() => null);
    // TCP backs off its retransmissions (0.2, 0.4, 0.8 … s): after a long blackout the next one may be ~as long away
    const after = await waitProgress(await statuses(), 2, 60_000);
    const firstClient = (s: StreamStatus) => Object.keys(s.clients)[0];
    const survived = after.filter((s, i) => !s.closed && s.errors.length === 0 && Object.keys(s.endpoints).length === 1 && Object.keys(s.clients).length === 1 && firstClient(s) === firstClient(first[i]) && s.responses >= before[i].responses + 2).length;
    const why: Record<string, number> = {};
    after.forEach((s, i) => {
      const k = s.closed ? `closed${s.errors[0] ? ` (${s.errors[0]})` : ''}` : s.errors.length > 0 ? `error ${s.errors[0]}` : Object.keys(s.endpoints).length !== 1 ? 'endpoint changed' : firstClient(s) !== firstClient(first[i]) || Object.keys(s.clients).length !== 1 ? 'masquerade port changed' : s.responses < before[i].responses + 2 ? 'no answer after the event' : '';
      if (k !== '') why[k] = (why[k] ?? 0) + 1;
    });
    if (Object.keys(why).length > 0) notes.push(`connections that did not go on: ${JSON.stringify(why)}`);
    const crashed = !tp.running && !ctx.intended ? 1 : 0;
    if (crashed) notes.push(`tunproxy exited on its own: ${tp.lines.slice(-5).join(' | ')}`);
    const result: ScenarioResult = {
      ...empty,
      streamPps: Math.round(g.pps),
      sent: g.sent,
      lost: Math.max(0, g.sent - main.distinct),
      duplicated: main.duplicates,
      misdelivered: main.foreign + decoys.reduce((a, d) => a + d.received, 0),
      maxGapMs: Math.round(main.maxGapMs * 100) / 100,
      connections: spec.connections,
      connectionsSurvived: survived,
      establishedDeliveredRatio: spec.establishedRatio ? Math.round((main.distinct / Math.max(1, g.sent)) * 1e6) / 1e6 : null,
      crashes: crashed,
      ...ctx.result,
    };
    notes.push(`stream: sent ${fmt(g.sent)} in ${g.seconds.toFixed(1)} s, received ${fmt(main.distinct)} distinct; longest gap ${main.maxGapMs.toFixed(1)} ms, ${fmt(main.maxGapAtMs)} ms after the first datagram; ${main.gapsOver5ms} gaps over 5 ms; the datagrams around it were sent ${main.maxGapSendMs.toFixed(1)} ms apart (the sender's own longest pause ${g.maxSendGapMs.toFixed(1)} ms); the longest send-to-arrival delay ${main.maxDelayMs.toFixed(1)} ms, ${fmt(main.delaysOver5ms)} datagrams over 5 ms`);
    if (drops1.naps !== null && drops1.naps.naps > 0) notes.push(`the packet thread napped ${fmt(drops1.naps.naps)} times since its start, ${drops1.naps.napMs.toFixed(1)} ms in all (--packet-nap: in its control work, it had held its CPU 2 ms without a wait)`);
    const lostN = Math.max(0, g.sent - main.distinct);
    if (lostN > 0) notes.push(whereLost(lostN, drops0, drops1) + (spec.name === 'restart-kill9' ? ' (a kill -9 also takes the batch the killed process had read and not yet written, at most 64 packets of all traffic: no counter survives it)' : ''));
    const stall = pr === null ? null : machineStalls(pr, main);
    if (stall !== null) notes.push(stall.note);
    if (main.lead !== null) notes.push(`before the event (${fmt(main.lead.received)} datagrams, no event: the floor): longest gap ${main.lead.maxGapMs.toFixed(1)} ms, ${main.lead.gapsOver5ms} gaps over 5 ms, longest delay ${main.lead.maxDelayMs.toFixed(1)} ms`);
    return { result, detail: { name: spec.name, what: spec.what, notes, floorGapMs: main.lead ? Math.round(main.lead.maxGapMs * 100) / 100 : null, maxDelayMs: Math.round(main.maxDelayMs * 100) / 100, machineStallMs: stall?.maxMs ?? null } };
  } catch (e) {
    log(`${spec.name}: ${(e as Error).stack ?? e}`);
    notes.push(`failed: ${(e as Error).message.split('\n')[0]}`);
    return { result: { ...empty, crashes: tp && !tp.running ? 1 : null }, detail: { name: spec.name, what: spec.what, notes, error: (e as Error).message } };
  } finally {
    gen?.child.kill('SIGTERM');
    probe?.child.kill('SIGTERM');
    for (const s of sinks) s.child.kill('SIGTERM');
    for (const name of streams) await client.call('stream.stop', { name }).catch(() => {});
    await tp?.stop().catch(() => {});
    if (holder) {
      await stopChild(holder.child, 2000);
      const handed = holder.lines.filter((l) => / handed /.test(l)).length;
      notes.push(`the holder handed the device out ${handed} times`);
    }
    rmSync(dir, { recursive: true, force: true });
    rmSync(pinDir, { recursive: true, force: true });
    scenarioDirs.delete(dir);
    scenarioDirs.delete(pinDir);
  }
}

// ------------------------------------------------------------------ the scenarios

const stats = async (api: ApiClient) =>
  (
    await api.call<{
      conntrack: { entries: number; evictions: number; inserts: number };
      counters: { drops: Record<string, number>; malformed: Record<string, number> };
      memory: ReturnType<typeof memoryOf>;
    }>('GET', '/v1/stats')
  ).body;

function rssKb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** The node namespace's boot id and network namespace, as tunproxy there computes them. */
function provenanceIn(ns: string): { bootId: string; netns: string } {
  const code = "import('./dataplane/conntrack-pinned.ts').then((m) => console.log(JSON.stringify(m.pinProvenance())))";
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', '-e', code], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot read the provenance in ${ns}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim()) as { bootId: string; netns: string };
}

/**
 * A pinned table of `flows` assured UDP flows of the flood service, written where the scenario's
 * tunproxy will find it: 198.18.0.0/15 sources (RFC 2544's benchmarking range), not masqueraded,
 * an hour to live. tunproxy recovers them at start exactly as after a crash.
 */
function writeFloodTable(lab: Lab, pinDir: string, flows: number, capacity: number): void {
  const t = PinnedTable.open({ dir: pinDir, name: `${lab.tunName}.ct`, maxEntries: capacity, provenance: provenanceIn(lab.node.ns), seed: 1 });
  const ct = t.conntrack;
  // not masqueraded (the source kept, as for a client pod or externalTrafficPolicy Local): one
  // endpoint:port has 64 K masquerade ports, a million flows to it need their own reply tuples
  const info = { serviceName: 'default/flood:udp', serviceIndex: 2, endpointAddr: parseIPv4(FLOOD_POD), endpointPort: FLOOD_PORT, masquerade: false };
  const vip = parseIPv4(VIP_FLOOD);
  const pod = parseIPv4(FLOOD_POD);
  const base = parseIPv4('198.18.0.1');
  const now = ct.now();
  for (let i = 0; i < flows; i++) {
    const src = base + Math.floor(i / 60000);
    const sport = 1024 + (i % 60000);
    const e = ct.insert(PROTO_UDP, src, vip, sport, FLOOD_PORT, pod, src, FLOOD_PORT, sport, now, info);
    if (e === null) throw new Error(`flow ${i} refused`);
    ct.update(e, CT_DIR_ORIGINAL, 0, 92, now);
    ct.update(e, CT_DIR_REPLY, 0, 92, now);
    e.assured = true;
    e.expires = now + 3_600_000;
    ct.pin.writeDynamic(e._slot, e);
  }
  t.finish();
}

function specs(): ScenarioSpec[] {
  const bigA = () => bigRuleSet(C.services, 'a');
  return [
    {
      name: 'put-100k',
      what: `a full PUT /v1/ruleset of ${fmt(C.services)} services replacing every other service (variant A → B), the stream at ${fmt(C.putPps)} pkt/s (${QUICK ? 'quick' : `50 % of ${fmt(TUN.pps)}, ${TUN.from}`})`,
      pps: C.putPps,
      connections: C.connections,
      rules: bigA(),
      action: async (ctx) => {
        const body = JSON.stringify(bigRuleSet(C.services, 'b'));
        const t0 = performance.now();
        const r = await ctx.api.request('PUT', '/v1/ruleset', { body, contentType: 'application/json' });
        ctx.notes.push(`PUT answered ${r.status} in ${fmt(performance.now() - t0)} ms (${fmt(body.length / 1e6, 1)} MB)`);
        if (r.status >= 300) throw new Error(`PUT /v1/ruleset: ${r.status} ${r.text.slice(0, 300)}`);
      },
    },
    {
      name: 'import-100k',
      what: `POST /v1/import/iptables?apply=true of kube-proxy's iptables-save for ${fmt(C.services)} services (the control/iptables writer's output for variant B)`,
      pps: C.streamPps,
      connections: C.connections,
      rules: bigA(),
      action: async (ctx) => {
        const text = writeIptables(bigRuleSet(C.services, 'b'));
        const t0 = performance.now();
        const r = await ctx.api.request('POST', '/v1/import/iptables', { body: text, contentType: 'text/plain', query: { apply: 'true', allowPartial: 'true', nodeAddresses: node.addresses.join(','), clusterCIDR: node.clusterCIDR } });
        ctx.notes.push(`import answered ${r.status} in ${fmt(performance.now() - t0)} ms (${fmt(text.length / 1e6, 1)} MB of iptables-save)`);
        if (r.status >= 300) throw new Error(`POST /v1/import/iptables: ${r.status} ${r.text.slice(0, 300)}`);
      },
    },
    {
      name: 'conntrack-list-1m',
      what: `\`tunproxy conntrack -L\` of a ${fmt(C.listFlows)}-flow table (a pinned table of ${fmt(C.listFlows)} assured UDP flows generated before the start, recovered by tunproxy as after a crash)`,
      pps: C.streamPps,
      connections: C.connections,
      rules: baseRuleSet(),
      args: ['--conntrack-max', String(C.listFlows + 100000)],
      before: (_dir, pinDir) => {
        const t0 = performance.now();
        writeFloodTable(labRef!, pinDir, C.listFlows, C.listFlows + 100000);
        log(`conntrack-list-1m: ${fmt(C.listFlows)} flows written in ${fmt(performance.now() - t0)} ms`);
      },
      action: async (ctx) => {
        const st = await stats(ctx.api);
        ctx.notes.push(`table before the listing: ${fmt(st.conntrack.entries)} flows`);
        const t0 = performance.now();
        const r = await new Promise<{ code: number | null; bytes: number; lines: number; stderr: string }>((resolve) => {
          const c = spawn(process.execPath, [TUNPROXY_BIN, 'conntrack', '-L', '--socket', join(ctx.dir, 'api.sock')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
          let bytes = 0;
          let lines = 0;
          let stderr = '';
          c.stdout!.on('data', (d: Buffer) => {
            bytes += d.length;
            for (const b of d) if (b === 10) lines++;
          });
          c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
          c.on('close', (code) => resolve({ code, bytes, lines, stderr }));
        });
        ctx.notes.push(`conntrack -L: exit ${r.code}, ${fmt(r.lines)} lines, ${fmt(r.bytes / 1e6, 1)} MB in ${fmt(performance.now() - t0)} ms`);
        if (r.code !== 0) throw new Error(`tunproxy conntrack -L failed (${r.code}): ${r.stderr.slice(0, 300)}`);
        if (r.lines < C.listFlows) ctx.notes.push(`fewer lines than flows: ${r.stderr.trim().slice(0, 200)}`);
      },
    },
    {
      name: 'state-save',
      what: `one service added (PUT /v1/services/default/extra) to a ${fmt(C.services)}-service rule set: an incremental apply, answered once the change's line is synced to the state directory's journal, then the state save of the whole rule set when the journal is folded into the state file (5 s after the last change), waited for until the new generation is on disk`,
      pps: C.streamPps,
      connections: C.connections,
      rules: bigA(),
      action: async (ctx) => {
        const genFile = join(ctx.dir, 'state', `${TUN_NAME}.generation`);
        const before = existsSync(genFile) ? readFileSync(genFile, 'utf8').trim() : '';
        const t0 = performance.now();
        const r = await ctx.api.request('PUT', '/v1/services/default/extra', { body: { clusterIP: '10.32.20.50', ports: [{ name: '', protocol: 'UDP', port: 53 }], endpoints: [{ address: WEB_PODS[0] }] } });
        if (r.status >= 300) throw new Error(`PUT /v1/services/default/extra: ${r.status} ${r.text.slice(0, 300)}`);
        const answered = performance.now() - t0;
        const deadline = Date.now() + 120_000;
        while ((existsSync(genFile) ? readFileSync(genFile, 'utf8').trim() : '') === before && Date.now() < deadline) await sleep(5);
        ctx.notes.push(`answered in ${fmt(answered)} ms (the change in the journal); the whole rule set of generation ${existsSync(genFile) ? readFileSync(genFile, 'utf8').trim() : '?'} in the state file after ${fmt(performance.now() - t0)} ms`);
      },
    },
    {
      name: 'swaps-1000',
      what: `${fmt(C.swaps)} rule-set swaps (PUT /v1/ruleset, one service toggled), one after the other, the stream at ${fmt(C.swapPps)} pkt/s`,
      pps: C.swapPps,
      connections: C.connections,
      rules: baseRuleSet(),
      action: async (ctx) => {
        const a = JSON.stringify(toggled());
        const b = JSON.stringify(baseRuleSet());
        for (let i = 0; i < C.swaps; i++) {
          const r = await ctx.api.request('PUT', '/v1/ruleset', { body: i % 2 === 0 ? a : b, contentType: 'application/json' });
          if (r.status >= 300) throw new Error(`swap ${i}: ${r.status} ${r.text.slice(0, 200)}`);
        }
      },
    },
    ...(['restart-sigterm', 'restart-kill9'] as const).map(
      (name): ScenarioSpec => ({
        name,
        what: `${name === 'restart-sigterm' ? 'SIGTERM' : 'kill -9'} with ${fmt(C.restartConnections)} established TCP connections, restarted at once by the harness; the stream at ${fmt(C.streamPps / 10)} pkt/s goes on meanwhile. A \`tunproxy tun-holder\` holds the TUN's open file throughout and every tunproxy takes it with --tun-holder, so the restart's packets wait in the device queue (${fmt(holderQueue())} packets) and are delivered by the next tunproxy: lost counts what the queue did not keep (without a holder Linux drops what is routed to a TUN no process holds open: test/e2e/tun-holder.test.ts is the control)`,
        pps: C.streamPps / 10,
        connections: C.restartConnections,
        rules: baseRuleSet(),
        args: ['--conntrack-max', '262144'],
        holder: true,
        action: async (ctx) => {
          ctx.intended = true;
          const t0 = performance.now();
          if (name === 'restart-kill9') process.kill(ctx.tp.pid, 'SIGKILL');
          else process.kill(ctx.tp.pid, 'SIGTERM');
          await ctx.tp.exited;
          const exitedAfter = performance.now() - t0;
          ctx.tp = await ctx.start();
          ctx.intended = false;
          ctx.result.readyAfterMs = Math.round(performance.now() - t0);
          const rec = ctx.tp.lines.find((l) => /connection table (recovered|restored)/.test(l));
          ctx.notes.push(`exited after ${fmt(exitedAfter)} ms, ready again after ${fmt(ctx.result.readyAfterMs)} ms; ${rec ?? 'no table recovered'}`);
        },
      }),
    ),
    {
      name: 'conntrack-flood',
      what: `a new-flow flood of ${fmt(2 * C.floodMax)} flows (twice --conntrack-max ${fmt(C.floodMax)}) at ${fmt(C.floodRate)} flows/s from 198.18.0.0/15 while ${C.connections} connections exchange data; the stream is the established traffic`,
      pps: C.streamPps,
      connections: C.connections,
      rules: baseRuleSet(),
      args: ['--conntrack-max', String(C.floodMax)],
      establishedRatio: true,
      action: async (ctx) => {
        const s0 = await stats(ctx.api);
        const flood = jsonTool<SinkResult>(ctx.lab.podFor(FLOOD_POD).ns, [SEQSINK, '--bind', FLOOD_POD, '--port', String(FLOOD_PORT), '--expect', '1'], true);
        await flood.ready;
        const g = await jsonTool<GenResult>(ctx.lab.client.ns, [GEN, '--raw', '--src', '198.18.0.1', '--src-count', '64', '--sport', '1024', '--dst', VIP_FLOOD, '--dport', String(FLOOD_PORT), '--count', String(2 * C.floodMax), '--rate', String(C.floodRate), '--size', '32'], false).result;
        await sleep(300);
        flood.child.kill('SIGTERM');
        const f = await flood.result;
        const s1 = await stats(ctx.api);
        ctx.notes.push(`flood: sent ${fmt(g.sent)} new flows in ${g.seconds.toFixed(1)} s, ${fmt(f.received)} reached the flood pod; the table: ${fmt(s1.conntrack.entries)} of ${fmt(C.floodMax)} flows, evictions ${fmt(s1.conntrack.evictions - s0.conntrack.evictions)}, inserts ${fmt(s1.conntrack.inserts - s0.conntrack.inserts)}; drops ${JSON.stringify(s1.counters.drops)}`);
      },
    },
    {
      name: 'soak-10min',
      what: `${C.soakSeconds >= 60 ? `${C.soakSeconds / 60} minutes` : `${C.soakSeconds} s`} of mixed traffic: the stream (established), ${C.connections} connections, new flows at ${fmt(C.soakNewFlowRate)}/s, a rule-set swap every second; RSS and table sizes sampled, growth measured after the first quarter (warm-up)`,
      pps: C.streamPps,
      connections: C.connections,
      rules: baseRuleSet(),
      args: ['--conntrack-max', '262144'],
      establishedRatio: true,
      action: async (ctx) => {
        const flood = jsonTool<SinkResult>(ctx.lab.podFor(FLOOD_POD).ns, [SEQSINK, '--bind', FLOOD_POD, '--port', String(FLOOD_PORT), '--expect', '1'], true);
        await flood.ready;
        const newFlows = jsonTool<GenResult>(ctx.lab.client.ns, [GEN, '--raw', '--src', '198.18.64.1', '--src-count', '256', '--sport', '1024', '--dst', VIP_FLOOD, '--dport', String(FLOOD_PORT), '--rate', String(C.soakNewFlowRate), '--duration', String(C.soakSeconds), '--size', '32'], false);
        const a = JSON.stringify(toggled());
        const b = JSON.stringify(baseRuleSet());
        // each thread's heap beside the RSS: where growth comes from (objects, buffers, or neither: the allocator)
        const samples: Array<{ t: number; rssKb: number; conntrack: number; packet: ThreadHeap; control: ThreadHeap | null; malloc: ReturnType<typeof memoryOf>['malloc'] }> = [];
        const t0 = Date.now();
        const every = QUICK ? 1000 : 5000;
        let swaps = 0;
        let nextSample = 0;
        while (Date.now() - t0 < C.soakSeconds * 1000) {
          const r = await ctx.api.request('PUT', '/v1/ruleset', { body: swaps % 2 === 0 ? a : b, contentType: 'application/json' });
          if (r.status >= 300) throw new Error(`swap ${swaps}: ${r.status}`);
          swaps++;
          if (Date.now() - t0 >= nextSample) {
            const st = await stats(ctx.api);
            samples.push({ t: (Date.now() - t0) / 1000, rssKb: rssKb(ctx.tp.pid), conntrack: st.conntrack.entries, packet: st.memory.packetThread, control: st.memory.controlThread, malloc: st.memory.malloc });
            nextSample += every;
          }
          await sleep(1000);
        }
        const st = await stats(ctx.api);
        samples.push({ t: (Date.now() - t0) / 1000, rssKb: rssKb(ctx.tp.pid), conntrack: st.conntrack.entries, packet: st.memory.packetThread, control: st.memory.controlThread, malloc: st.memory.malloc });
        await newFlows.result;
        flood.child.kill('SIGTERM');
        await flood.result.catch(() => null);
        const warm = samples.filter((s) => s.t >= C.soakSeconds / 4);
        const w0 = warm[0] ?? samples[0];
        const last = samples[samples.length - 1];
        ctx.result.rssGrowthRatio = Math.round(((last.rssKb - w0.rssKb) / w0.rssKb) * 10000) / 10000;
        const maxCt = Math.max(...warm.map((s) => s.conntrack));
        ctx.notes.push(`${swaps} swaps; RSS ${fmt(w0.rssKb / 1024, 1)} MiB after warm-up (t=${w0.t.toFixed(0)} s) → ${fmt(last.rssKb / 1024, 1)} MiB at the end (max ${fmt(Math.max(...warm.map((s) => s.rssKb)) / 1024, 1)}); conntrack ${fmt(w0.conntrack)} → ${fmt(last.conntrack)} flows (max ${fmt(maxCt)} after warm-up)`);
        const mib = (b: number) => (b / 1048576).toFixed(1);
        const heaps = (x: (typeof samples)[number]) => `packet thread heap ${mib(x.packet.usedBytes)} of ${mib(x.packet.totalBytes)}, external ${mib(x.packet.externalBytes)}, malloced ${mib(x.packet.mallocedBytes)}; control worker ${x.control === null ? '-' : `heap ${mib(x.control.usedBytes)} of ${mib(x.control.totalBytes)}, external ${mib(x.control.externalBytes)}, malloced ${mib(x.control.mallocedBytes)}`}; C heap ${x.malloc === null ? '-' : `${mib(x.malloc.inUseBytes + x.malloc.mmapBytes)} in use, ${mib(x.malloc.freeBytes)} free, ${x.malloc.trims} trims gave back ${mib(x.malloc.releasedBytes)}`}`;
        ctx.notes.push(`MiB after warm-up: ${heaps(w0)}; at the end: ${heaps(last)}`);
        ctx.notes.push(`samples (s, RSS MiB, flows, packet-thread heap total MiB, control-worker heap total MiB): ${samples.map((s) => `${s.t.toFixed(0)}:${(s.rssKb / 1024).toFixed(1)}:${s.conntrack}:${mib(s.packet.totalBytes)}:${s.control === null ? '-' : mib(s.control.totalBytes)}`).join(' ')}`);
      },
    },
    {
      name: 'fuzz-1m',
      what: `${fmt(C.fuzzCount)} malformed packets (bench/tools/fuzzgen.c: UDP/TCP/ICMP/SCTP headers broken 9 ways) at ${fmt(C.fuzzRate)} pkt/s to the web ClusterIP while real traffic flows; tunproxy runs with its default --offload auto, so every packet reaches it behind the virtio-net header the kernel writes (the kernel never hands over a header that is itself malformed; random and inconsistent headers are the packet fuzzer's part, test/property/wire-fuzz.test.ts)`,
      pps: C.streamPps,
      connections: C.connections,
      rules: baseRuleSet(),
      action: async (ctx) => {
        const s0 = await stats(ctx.api);
        const f = await jsonTool<{ sent: number; errors: number; seconds: number; byCase: number[]; firstError: string }>(ctx.lab.client.ns, [FUZZGEN, '--dst', VIP_WEB, '--src', ctx.lab.client.address, '--count', String(C.fuzzCount), '--rate', String(C.fuzzRate), '--seed', '42'], false).result;
        await sleep(500);
        const s1 = await stats(ctx.api);
        const delta: Record<string, number> = {};
        for (const [k, v] of Object.entries(s1.counters.drops)) if (v - (s0.counters.drops[k] ?? 0) > 0) delta[k] = v - (s0.counters.drops[k] ?? 0);
        const mal: Record<string, number> = {};
        for (const [k, v] of Object.entries(s1.counters.malformed)) if (v - (s0.counters.malformed[k] ?? 0) > 0) mal[k] = v - (s0.counters.malformed[k] ?? 0);
        const dropped = Object.values(delta).reduce((a, b) => a + b, 0);
        ctx.notes.push(`fuzz: sent ${fmt(f.sent)} in ${f.seconds.toFixed(1)} s (by case ${f.byCase.join('/')}, ${f.errors} send errors); drops counted by tunproxy meanwhile ${fmt(dropped)} ${JSON.stringify(delta)}, malformed by error ${JSON.stringify(mal)}; ${fmt(f.sent - dropped)} not counted as drops (dropped by the node's kernel before the TUN, or forwarded)`);
      },
    },
    {
      name: 'baseline',
      what: `no event: the stream at ${fmt(C.streamPps)} pkt/s and ${C.connections} connections alone for ${C.baselineSeconds} s, the floor the other scenarios' gaps compare with (each scenario also reports its own floor, the stream before its event)`,
      pps: C.streamPps,
      connections: C.connections,
      rules: baseRuleSet(),
      action: async () => {
        await sleep(C.baselineSeconds * 1000);
      },
    },
  ];
}

// ------------------------------------------------------------------ main

let labRef: Lab | null = null;
let labState = '';

async function cleanup(): Promise<void> {
  for (const c of extra) await stopChild(c, 1000);
  await stopAllChildren(2000);
  // the scenario under way when a signal came: its directories (its finally does not run after process.exit)
  for (const d of scenarioDirs) rmSync(d, { recursive: true, force: true });
  if (labRef) await labDown(labRef.prefix, { stateDir: labState });
  if (labState) rmSync(labState, { recursive: true, force: true });
}

function markdown(results: ScenarioResult[], details: Detail[], seconds: number): string {
  const cell = (v: number | null) => (v === null ? '–' : typeof v === 'number' && !Number.isInteger(v) ? String(v) : fmt(v));
  const head = '| scenario | stream pkt/s | sent | lost | dup | misdelivered | max gap ms | gap before the event ms | longest delay ms | machine stall ms | connections | survived | established delivered | RSS growth | crashes | ready after ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|';
  const rows = results.map((r, i) => `| ${r.name} | ${cell(r.streamPps)} | ${cell(r.sent)} | ${cell(r.lost)} | ${cell(r.duplicated)} | ${cell(r.misdelivered)} | ${cell(r.maxGapMs)} | ${cell(details[i].floorGapMs ?? null)} | ${cell(details[i].maxDelayMs ?? null)} | ${cell(details[i].machineStallMs ?? null)} | ${cell(r.connections)} | ${cell(r.connectionsSurvived)} | ${cell(r.establishedDeliveredRatio)} | ${cell(r.rssGrowthRatio)} | ${cell(r.crashes)} | ${cell(r.readyAfterMs)} |`);
  const bars = [
    `- full PUT, import, 1 M listing, state save: 0 lost and longest gap ≤ 5 ms → ${['put-100k', 'import-100k', 'conntrack-list-1m', 'state-save'].map((n) => { const r = results.find((x) => x.name === n); return r ? `${n} ${r.lost === 0 && r.maxGapMs !== null && r.maxGapMs <= 5 ? 'met' : `not met (lost ${r.lost}, gap ${r.maxGapMs} ms)`}` : `${n} not run`; }).join('; ')}`,
    `- 1 000 swaps: 0 lost → ${(() => { const r = results.find((x) => x.name === 'swaps-1000'); return r ? (r.lost === 0 ? 'met' : `not met (${r.lost} lost)`) : 'not run'; })()}`,
    `- restarts: every connection goes on → ${['restart-sigterm', 'restart-kill9'].map((n) => { const r = results.find((x) => x.name === n); return r ? `${n} ${r.connectionsSurvived}/${r.connections}` : `${n} not run`; }).join('; ')}`,
    `- full table: ≥ 99.9 % of established traffic → ${(() => { const r = results.find((x) => x.name === 'conntrack-flood'); return r?.establishedDeliveredRatio != null ? `${(r.establishedDeliveredRatio * 100).toFixed(3)} %` : 'not run'; })()}`,
    `- long run: RSS growth ≤ 5 % → ${(() => { const r = results.find((x) => x.name === 'soak-10min'); return r?.rssGrowthRatio != null ? `${(r.rssGrowthRatio * 100).toFixed(2)} %` : 'not run'; })()}`,
    `- fuzz: 0 crashes → ${(() => { const r = results.find((x) => x.name === 'fuzz-1m'); return r ? `${r.crashes} crashes` : 'not run'; })()}`,
  ];
  return `# Reliability: soak and fault suite${QUICK ? ' (quick: CI sizes, not the benchmark)' : ''}

One run on ${machine()}. Command: \`npm run bench:reliability${QUICK ? ' -- --quick' : ''}\`, ${fmt(seconds)} s.

Every scenario runs its own \`tunproxy run ${TP_ARGS.join(' ')}\` (node ${NODE_ARGS.join(' ') || 'with no option'}) in the
lab's node namespace and carries a stream of sequence-numbered UDP datagrams (64-byte payload, paced in 1 ms
batches by bench/tools/udpgen.c) through a masqueraded ClusterIP to one pod, counted there by
bench/tools/seqsink.c${INSTR_RT ? ' (both at SCHED_FIFO up to 50 000 pkt/s, else at nice -10)' : ''}${INSTR_CPUS !== null ? ` (both on CPU ${INSTR_CPUS}, off tunproxy's packet CPU)` : ''} (lost = sent − distinct received; the longest gap is between two arrivals at
the pod, by the kernel's receive time of each datagram, SO_TIMESTAMPNS; "gap before the event": the same
for the stream before the event began, the floor at that rate with nothing happening; "longest delay": the
longest time from send, stamped in the datagram, to arrival, what the path held a datagram; "machine stall": the longest
a SCHED_FIFO 99 thread on some CPU woke late during the stream, bench/tools/stallprobe.c, time no task could run there:
the hypervisor, the kernel), decoy sinks on the other pods (the endpoints of every
filler service) counting misdelivered datagrams, and established TCP connections (HTTP keep-alive requests
one after the other, scripts/netclient.ts). A connection survived when it is still open, saw no error,
answered after the event, and kept its endpoint and its masquerade port (the pods' HTTP servers keep an
idle keep-alive connection 300 s, so a connection breaks by the dataplane, not by the server's idle timer).
"–": does not apply.

${head}
${rows.join('\n')}

## Bars

${bars.join('\n')}

## Scenarios

${details.map((d) => `### ${d.name}\n\n${d.what}.\n\n${d.notes.map((n) => `- ${n}`).join('\n')}${d.error ? `\n- error: ${d.error.split('\n').slice(0, 3).join(' ')}` : ''}`).join('\n\n')}
`;
}

async function main(): Promise<void> {
  const skip = netnsUnavailableReason();
  if (skip) {
    log(`cannot run: ${skip}`);
    process.exit(1);
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log(`${sig}: removing the lab`);
      cleanup().finally(() => process.exit(130));
    });
  }
  if (!QUICK && PPS === null && TUN.mismatch !== null && (ONLY === null || ONLY.includes('put-100k'))) {
    log(`cannot run put-100k: ${TUN.mismatch}`);
    process.exit(1);
  }
  const t0 = performance.now();
  labState = mkdtempSync(join(tmpdir(), 'tp-rel-lab-'));
  // the lab's routes and pods come from the base rule set; pod servers are started here (the web pods' HTTP)
  log("lab up");
  labRef = await labUp({ prefix: `tp-b${process.pid}-rel`, ruleSet: baseRuleSet(), stateDir: labState, podServers: false, tunName: TUN_NAME });
  const lab = labRef;
  const results: ScenarioResult[] = [];
  const details: Detail[] = [];
  let client: NetClient | null = null;
  try {
    for (const p of WEB_PODS) {
      const c = spawnIn(lab.podFor(p).ns, [process.execPath, '--import', 'tsx', join(ROOT, 'scripts', 'pod-server.ts'), '--address', p, '--listen', 'tcp:8080', '--keep-alive-timeout', '300000']);
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: c.stdout! }).on('line', (l) => l.startsWith('ready') && resolve());
        c.on('exit', (code) => reject(new Error(`pod server ${p} exited (${code})`)));
      });
    }
    log("pod servers ready");
    client = await NetClient.start(lab.client.ns);
    log("client ready");
    for (const spec of specs()) {
      if (ONLY && !ONLY.includes(spec.name)) continue;
      log(`${spec.name}: ${spec.what}`);
      const { result, detail } = await runScenario(lab, client, PPS !== null ? { ...spec, pps: PPS, what: `${spec.what} (--pps ${PPS}: the stream at ${fmt(PPS)} pkt/s)` } : spec);
      log(`${spec.name}: ${JSON.stringify(result)}`);
      results.push(result);
      details.push(detail);
    }
  } finally {
    await client?.stop();
    await cleanup();
  }
  mkdirSync(OUT_DIR, { recursive: true });
  writeFileSync(join(OUT_DIR, `${OUT}.json`), JSON.stringify({ scenarios: results }, null, 2) + '\n');
  const md = markdown(results, details, (performance.now() - t0) / 1000);
  writeFileSync(join(OUT_DIR, `${OUT}.md`), md);
  console.log(md);
  log(`written: ${join(OUT_DIR, `${OUT}.json`)}, ${join(OUT_DIR, `${OUT}.md`)}`);
}

await main();
