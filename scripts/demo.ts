/**
 * The demo (`npm run demo`, as root): tunproxy doing its main job in a lab of
 * network namespaces built from examples/demo-ruleset.json, with real clients
 * and real servers, then a short report of what happened, then the lab is
 * removed (also on failure and on Ctrl-C).
 *
 *   bash scripts/setup.sh && node --import tsx scripts/demo.ts [--keep] [--rules FILE]
 *
 * --keep leaves the lab and tunproxy running at the end (prints how to remove them).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { RuleSet } from '../control/types.ts';
import { validateRuleSet } from '../control/validate.ts';
import { labDown, labUp } from './lab.ts';
import type { Lab } from './lab.ts';
import { netnsUnavailableReason } from './ns.ts';
import { NetClient, TunproxyProcess, stopAllChildren, stopChild } from './harness.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const { values: opts } = parseArgs({
  options: { rules: { type: 'string', default: `${ROOT}examples/demo-ruleset.json` }, keep: { type: 'boolean', default: false } },
});
const RULES = opts.rules!;
const rel = (p: string): string => relative(process.cwd(), p) || p;
const t0 = Date.now();
const out = (s = ''): void => void process.stdout.write(s + '\n');
const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const step = (s: string): void => out(`  [${((Date.now() - t0) / 1000).toFixed(1).padStart(4)} s] ${s}`);

type Answer = Record<string, any>;

function fail(msg: string): never {
  process.stderr.write(`demo: ${msg}\n`);
  process.exit(1);
}

// ------------------------------------------------------------------ what the rule set says

const skip = netnsUnavailableReason();
if (skip) fail(`cannot run here: ${skip}. Run it as root on Linux: sudo npm run demo`);
if (!existsSync(`${ROOT}build/Release/tun.node`)) fail('the TUN addon is not built: run `bash scripts/setup.sh` (npm run demo does it first)');
let ruleSet: RuleSet;
{
  const v = validateRuleSet(JSON.parse(readFileSync(RULES, 'utf8')));
  if (!v.ok) fail(`${RULES} is not a valid rule set: ${v.errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
  ruleSet = JSON.parse(readFileSync(RULES, 'utf8')) as RuleSet;
}
const svc = (name: string) => {
  const s = ruleSet.services.find((x) => x.name === name);
  if (!s) fail(`${RULES} has no service ${name}: the demo expects kube-dns, web-svc and empty-svc`);
  return s;
};
const web = svc('web-svc');
const dns = svc('kube-dns');
const empty = svc('empty-svc');
const webPort = web.ports[0];
const dnsUdp = dns.ports.find((p) => p.protocol === 'UDP')!;
const dnsMetrics = dns.ports.find((p) => p.name === 'metrics');
const emptyPort = empty.ports[0];
const nodeAddr = ruleSet.node.addresses[0];
/** the IPv4 cluster CIDR (the first of kube-proxy's dual-stack pair) */
const clusterCIDR = ruleSet.node.clusterCIDR?.split(',')[0] ?? '(none)';
const prefix = `tp-demo-${process.pid}`;

const N_HTTP = 30;
const N_NODEPORT = 15;
const N_DNS = 20;
const N_METRICS = 4;
const N_POD = 6;
const N_HTTP6 = 10;
/** web-svc's IPv6 ClusterIP when the rule set makes it dual-stack (examples/demo-ruleset.json does) */
const web6 = (web.clusterIPs ?? []).find((a) => a.includes(':')) ?? null;

out(bold('tunproxy demo: a Kubernetes Service dataplane on a TUN device, with real traffic'));
out(`
What happens now (about 10 seconds):
  1. a lab of network namespaces named ${prefix}-* is built from ${rel(RULES)}:
     a client outside the cluster, a node with the TUN device tun0, one namespace per pod with a real
     HTTP/DNS server answering with its own address and the source address it saw, and a client pod
     inside the cluster CIDR ${clusterCIDR}. Nothing is added to the root namespace.
  2. \`tunproxy run --tun tun0 --rules ${rel(RULES)}\` starts in the node namespace.
  3. Traffic from the client: ${N_HTTP} HTTP requests to ${web.name}'s ClusterIP ${web.clusterIP}:${webPort.port}, ${N_NODEPORT} via the
     NodePort ${nodeAddr}:${webPort.nodePort}, ${N_DNS} DNS queries over UDP to ${dns.name} ${dns.clusterIP}:${dnsUdp.port}${dnsMetrics ? `, ${N_METRICS} to its metrics port ${dnsMetrics.port}` : ''},
     one connection to ${empty.name} ${empty.clusterIP}:${emptyPort.port} (no endpoints); from the client pod: ${N_POD} HTTP requests.${web6 ? `
     ${web.name} is dual-stack: ${N_HTTP6} HTTP requests also go to its IPv6 ClusterIP [${web6}]:${webPort.port} (IPv6 pods answer).` : ''}
  4. A report: endpoint hits, the source address the pods saw, the REJECT, tunproxy's connection
     table and counters. Then the lab is removed.
`);

// ------------------------------------------------------------------ clean up, whatever happens

let lab: Lab | null = null;
let tp: TunproxyProcess | null = null;
const agents: NetClient[] = [];
const children: ChildProcess[] = [];
let cleaning: Promise<void> | null = null;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await Promise.all(agents.map((a) => a.stop().catch(() => {})));
    await Promise.all(children.map((c) => stopChild(c, 1000)));
    await tp?.stop().catch(() => null);
    await stopAllChildren(2000); // what was still starting when a signal came
    await labDown(prefix);
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    process.stderr.write(`\ndemo: ${sig}: removing the lab ${prefix}...\n`);
    cleanup().finally(() => process.exit(130));
  });
}

// ------------------------------------------------------------------ report helpers

function hits(answers: Answer[]): string {
  const by = new Map<string, number>();
  let failed = 0;
  for (const a of answers) {
    if (a.error || !a.endpoint) failed++;
    else by.set(a.endpoint, (by.get(a.endpoint) ?? 0) + 1);
  }
  const parts = [...by].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([ep, n]) => `${ep} ×${n}`);
  return `${String(answers.length - failed).padStart(2)}/${answers.length} answered   ${parts.join('   ')}${failed ? `   (${failed} failed)` : ''}`;
}

function sources(answers: Answer[]): string {
  const by = new Map<string, number>();
  for (const a of answers) {
    if (!a.client) continue;
    const addr = String(a.client).replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
    by.set(addr, (by.get(addr) ?? 0) + 1);
  }
  return [...by].map(([addr, n]) => `${addr} in ${n}/${answers.length} answers`).join(', ');
}

/** tcpdump inside ns: resolves with the first packet line matching the filter (or null after timeoutMs). */
async function tcpdumpOne(ns: string, dev: string, filter: string, timeoutMs: number): Promise<{ line: Promise<string | null> }> {
  const child = spawn('ip', ['netns', 'exec', ns, 'tcpdump', '-l', '-n', '-i', dev, '-c', '1', filter], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const listening = new Promise<void>((resolve) => {
    createInterface({ input: child.stderr! }).on('line', (l) => {
      if (/listening on/.test(l)) resolve();
    });
    child.on('exit', () => resolve());
    setTimeout(resolve, 3000);
  });
  const line = new Promise<string | null>((resolve) => {
    createInterface({ input: child.stdout! }).on('line', (l) => resolve(l.replace(/^\S+ /, '')));
    child.on('exit', () => resolve(null));
    setTimeout(() => resolve(null), timeoutMs);
  });
  await listening;
  return { line };
}

// ------------------------------------------------------------------ run

try {
  step(`building the lab ${prefix}`);
  lab = await labUp({ prefix, ruleSet, clientPod: true });
  step(`lab up: client ${lab.client.address}, node ${lab.node.addresses.join(' + ')}, ${lab.pods.length} pods (${lab.pods.map((p) => p.address).join(', ')}), client pod ${lab.clientPod!.address}`);
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules: RULES });
  step(`tunproxy running (pid ${tp.pid}): ${tp.lines.find((l) => l.includes('generation'))?.replace(/^tunproxy: /, '') ?? ''}`);
  const [client, cpod] = await Promise.all([NetClient.start(lab.client.ns), NetClient.start(lab.clientPod!.ns)]);
  agents.push(client, cpod);

  step('sending traffic');
  const viaClusterIP: Answer[] = await client.call('http', { url: `http://${web.clusterIP}:${webPort.port}/`, count: N_HTTP });
  const viaNodePort: Answer[] = await client.call('http', { url: `http://${nodeAddr}:${webPort.nodePort}/`, count: N_NODEPORT });
  const dnsAnswers: Answer[] = await client.call('dns', { server: `${dns.clusterIP}:${dnsUdp.port}`, type: 'TXT', name: 'web-svc.default.svc.cluster.local', count: N_DNS });
  const metrics: Answer[] = dnsMetrics ? await client.call('http', { url: `http://${dns.clusterIP}:${dnsMetrics.port}/metrics`, count: N_METRICS }) : [];
  const fromPod: Answer[] = await cpod.call('http', { url: `http://${web.clusterIP}:${webPort.port}/`, count: N_POD });
  const viaClusterIP6: Answer[] = web6 && lab.client.address6 ? await client.call('http', { url: `http://[${web6}]:${webPort.port}/`, count: N_HTTP6 }) : [];
  const dump = await tcpdumpOne(lab.client.ns, 'eth0', `icmp and src host ${empty.clusterIP}`, 3000);
  const refused = await client.call('tcp', { to: `${empty.clusterIP}:${emptyPort.port}` });
  const icmpLine = await dump.line;
  const { status, conntrack } = await tp.status();
  step('traffic done; report:');

  // ---------------------------------------------------------------- report
  out();
  out(bold('Per-endpoint hits') + ' (the endpoint each answer came from, as the pod server wrote it)');
  const rows: Array<[string, Answer[]]> = [
    [`${web.namespace}/${web.name} ClusterIP ${web.clusterIP}:${webPort.port}/TCP`, viaClusterIP],
    [`${web.namespace}/${web.name} NodePort ${nodeAddr}:${webPort.nodePort}/TCP`, viaNodePort],
    [`${dns.namespace}/${dns.name} ClusterIP ${dns.clusterIP}:${dnsUdp.port}/UDP`, dnsAnswers],
    ...(dnsMetrics ? [[`${dns.namespace}/${dns.name} ClusterIP ${dns.clusterIP}:${dnsMetrics.port}/TCP`, metrics] as [string, Answer[]]] : []),
    [`${web.namespace}/${web.name} ClusterIP, from the client pod`, fromPod],
    ...(web6 ? [[`${web.namespace}/${web.name} IPv6 ClusterIP [${web6}]:${webPort.port}/TCP`, viaClusterIP6] as [string, Answer[]]] : []),
  ];
  const width = Math.max(...rows.map(([l]) => l.length));
  for (const [label, answers] of rows) out(`  ${label.padEnd(width)}   ${hits(answers)}`);
  out();
  const fromOutside = [...viaClusterIP, ...viaNodePort, ...dnsAnswers, ...metrics];
  out(bold('Source address the pods saw'));
  out(`  client ${lab.client.address} (outside the cluster CIDR ${clusterCIDR}): ${sources(fromOutside)}`);
  out(`     -> masqueraded to the node's address ${lab.node.masqueradeAddress}, like kube-proxy's KUBE-MARK-MASQ + MASQUERADE`);
  out(`  client pod ${lab.clientPod!.address} (inside the cluster CIDR): ${sources(fromPod)}`);
  out(`     -> the pod's own address is preserved, as kube-proxy does for in-cluster clients`);
  if (web6) {
    out(`  client ${lab.client.address6} over IPv6: ${sources(viaClusterIP6)}`);
    out(`     -> masqueraded to the node's IPv6 address ${lab.node.masqueradeAddress6}, as kube-proxy's IPv6 proxier does`);
  }
  out();
  out(bold(`${empty.namespace}/${empty.name} (no endpoints)`));
  out(`  connect to ${empty.clusterIP}:${emptyPort.port} from the client: ${refused.error ?? (refused.connected ? 'CONNECTED (unexpected)' : JSON.stringify(refused))}`);
  out(`  what the client received (tcpdump on its eth0): ${icmpLine ?? '(nothing captured)'}`);
  out(`     -> kube-proxy's REJECT: tunproxy answers with ICMP port unreachable from the ClusterIP`);
  out();
  const order = ['tcp', 'udp'];
  const picked: string[] = [];
  const seen = new Set<string>();
  for (const l of conntrack) {
    const m = /^(\w+)\s.*?src=\S+ dst=(\S+) sport=\d+ dport=(\d+)/.exec(l);
    const key = m ? `${m[1]} ${m[2]}:${m[3]}` : l;
    const src = /src=(\S+)/.exec(l)?.[1] ?? '';
    const k = `${key} ${src === lab.clientPod!.address ? 'pod' : 'client'}`;
    if (!seen.has(k)) {
      seen.add(k);
      picked.push(l);
    }
  }
  picked.sort((a, b) => order.indexOf(a.split(/\s/)[0]) - order.indexOf(b.split(/\s/)[0]));
  out(bold('Connection table') + ` (tunproxy's, printed on SIGUSR1 in \`conntrack -L\` format: ${conntrack.length} entries, one per service port and client shown)`);
  for (const l of picked) out(`  ${l}`);
  out();
  out(bold('Counters') + ` (status line: ${status.line.replace(/^tunproxy: /, '')})`);
  out(`  packets by verdict: forward=${status.fwd} reply=${status.reply} pass=${status.pass} drop=${status.drop}`);
  out(`  drops by reason:    ${Object.keys(status.drops).length ? Object.entries(status.drops).map(([k, v]) => `${k}=${v}`).join(' ') : 'none'}`);
  out(`  new flows: ${status.newFlows}   rule-set generation: ${status.gen}   service ports: ${status.services}`);
  out();

  const ok =
    [...viaClusterIP, ...viaNodePort, ...dnsAnswers, ...metrics, ...fromPod, ...viaClusterIP6].every((a) => !a.error) &&
    refused.error === 'ECONNREFUSED' &&
    (web6 === null || viaClusterIP6.length === N_HTTP6);
  const final = opts.keep ? null : await tp.stop();
  if (final) step(`tunproxy stopped: ${tp.lines.find((l) => l.startsWith('tunproxy: final:'))?.replace(/^tunproxy: /, '')}`);
  if (opts.keep) {
    await Promise.all(agents.map((a) => a.stop()));
    out(`--keep: the lab ${prefix} and tunproxy (pid ${tp.pid}) are left running.`);
    out(`  look around:  ip netns exec ${lab.client.ns} curl http://${web.clusterIP}:${webPort.port}/   ·  kill -USR1 ${tp.pid}`);
    out(`  remove:       kill ${tp.pid}; node --import tsx scripts/netns-down.ts --prefix ${prefix}`);
    process.exit(ok ? 0 : 1);
  }
  await cleanup();
  step(`lab ${prefix} removed`);
  out();
  out(bold('What to look at:'));
  const reached = (answers: Answer[], s: typeof web): string => {
    const hit = new Set(answers.map((a) => String(a.endpoint ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1')));
    return `${s.endpoints!.filter((e) => hit.has(e.address)).length}/${s.endpoints!.length}`;
  };
  out(`  - Per-endpoint hits: endpoints of ${web.name} reached ${reached([...viaClusterIP, ...viaNodePort, ...viaClusterIP6], web)}, of ${dns.name} ${reached(dnsAnswers, dns)}; new flows are spread at random, like kube-proxy's statistic rules.`);
  out(`  - Source addresses: ${lab.node.masqueradeAddress} (masquerade) for the outside client, the pod's own address from inside the cluster.`);
  if (web6) out(`  - IPv6: ${web.name}'s IPv6 ClusterIP reached the IPv6 pods, masqueraded to ${lab.node.masqueradeAddress6}; the connection table holds those flows too.`);
  out(`  - ${empty.name}: ECONNREFUSED straight away, from an ICMP port unreachable that tunproxy generated.`);
  out(`  - The connection table: original tuple, then the reply tuple (endpoint -> masquerade address or client).`);
  out(`  - Counters: drop=0 unless something went wrong, and then by its reason; reply counts the ICMP answers.`);
  out(ok ? 'demo: OK' : 'demo: some requests FAILED (see above)');
  process.exitCode = ok ? 0 : 1;
} catch (e) {
  process.stderr.write(`demo: failed: ${(e as Error).message}\n`);
  if (tp) process.stderr.write(`tunproxy's last lines:\n${tp.lines.slice(-10).join('\n')}\n`);
  await cleanup().catch((err) => process.stderr.write(`demo: cleanup: ${(err as Error).message}\n`));
  process.stderr.write(`demo: lab ${prefix} removed\n`);
  process.exitCode = 1;
}
