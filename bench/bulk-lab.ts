/**
 * The lab for bulk traffic (bench:throughput and test/e2e/offload*.test.ts):
 * one endpoint pod behind a ClusterIP (masqueraded from the client outside
 * the cluster CIDR, not from the client pod) and a NodePort, TCP and UDP;
 * checksum error counters read with nstat in every namespace; the integrity
 * peer (bulk-peer.ts) on both ends.
 */
import type { ChildProcess } from 'node:child_process';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import type { RuleSet, Service } from '../control/types.ts';
import { labUp } from '../scripts/lab.ts';
import type { Lab } from '../scripts/lab.ts';
import { liveChildren } from '../scripts/harness.ts';

export const BULK_PEER = fileURLToPath(new URL('./bulk-peer.ts', import.meta.url));

export interface BulkAddresses {
  node: string;
  masq: string;
  cidr: string;
  vip: string;
  ep: string;
}

/** Addresses of lab number k (0..63), so labs of tests and benchmarks running at once never collide in a routed way. */
export function bulkAddresses(k: number): BulkAddresses {
  return { node: `172.16.${40 + k}.1`, masq: `10.80.${k}.1`, cidr: `10.80.${k}.0/24`, vip: `10.33.${k}.10`, ep: `10.80.${k}.7` };
}

export const IPERF_PORT = 5201;
export const IPERF_NODEPORT = 30521;
export const BULK_PORT = 9000;
export const BULK_NODEPORT = 30900;
/** UDP port for datagrams sent with UDP_SEGMENT (bench/tools/udpgso.c) */
export const USO_PORT = 9001;

/** The rule set; `swap` > 0 adds unrelated services that change on every swap. */
export function bulkRuleSet(a: BulkAddresses, swap = 0): RuleSet {
  const svc: Service = {
    namespace: 'bench',
    name: 'bulk',
    clusterIP: a.vip,
    ports: [
      { name: 'iperf', protocol: 'TCP', port: IPERF_PORT, targetPort: IPERF_PORT, nodePort: IPERF_NODEPORT },
      { name: 'iperf-udp', protocol: 'UDP', port: IPERF_PORT, targetPort: IPERF_PORT, nodePort: IPERF_NODEPORT },
      { name: 'bulk', protocol: 'TCP', port: BULK_PORT, targetPort: BULK_PORT, nodePort: BULK_NODEPORT },
      { name: 'uso', protocol: 'UDP', port: USO_PORT, targetPort: USO_PORT },
    ],
    endpoints: [{ address: a.ep, nodeLocal: true }],
  };
  const churn: Service[] = [];
  for (let k = 0; k <= swap % 5 && swap > 0; k++) {
    churn.push({
      namespace: 'churn',
      name: `svc-${k}`,
      clusterIP: `10.34.1.${((swap * 7 + k) % 250) + 1}`,
      ports: [{ name: 'p', protocol: k % 2 ? 'UDP' : 'TCP', port: 1000 + ((swap * 13 + k) % 5000), targetPort: 9100 + k }],
      endpoints: Array.from({ length: 1 + ((swap + k) % 4) }, (_, e) => ({ address: `10.81.1.${((swap + e * 17 + k) % 250) + 1}` })),
    });
  }
  return {
    apiVersion: 'tunproxy.dev/v1',
    node: { name: 'bulk-node', addresses: [a.node, a.masq], masqueradeAddress: a.masq, clusterCIDR: a.cidr },
    services: [svc, ...churn],
  };
}

/** The lab with a client pod and no pod servers (the bulk peers and iperf3 are started as needed). */
export async function bulkLabUp(prefix: string, a: BulkAddresses, stateDir: string): Promise<Lab> {
  return labUp({ prefix, ruleSet: bulkRuleSet(a), stateDir, podServers: false, clientPod: true });
}

/** TcpInCsumErrors + UdpInCsumErrors (+ Udp6/Tcp6 when present) of one namespace, absolute (nstat -a -z). */
export async function csumErrors(ns: string): Promise<Record<string, number>> {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'nstat', '-a', '-z', '--json'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Record<string, number> = {};
  try {
    const j = JSON.parse(r.stdout) as { kernel: Record<string, number> };
    for (const [k, v] of Object.entries(j.kernel)) if (/InCsumErrors$/.test(k)) out[k] = v;
  } catch {
    throw new Error(`nstat in ${ns} printed no JSON (exit ${r.status}): ${r.stderr || r.stdout}`);
  }
  return out;
}

/** The sum of the checksum error counters over namespaces. */
export async function csumErrorSum(namespaces: string[]): Promise<{ total: number; byNs: Record<string, Record<string, number>> }> {
  const byNs: Record<string, Record<string, number>> = {};
  let total = 0;
  for (const ns of namespaces) {
    byNs[ns] = await csumErrors(ns);
    for (const v of Object.values(byNs[ns])) total += v;
  }
  return { total, byNs };
}

export interface PeerResult {
  sent: number;
  sentSha256: string;
  received: number;
  receivedSha256: string;
  seconds: number;
}

/** A bulk-peer server in ns; resolves when listening, with its result to come. */
export async function peerServe(ns: string, port: number, o: { bytes?: number; seconds?: number }): Promise<{ child: ChildProcess; result: Promise<PeerResult> }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', BULK_PEER, 'serve', '--port', String(port),
    '--bytes', String(o.bytes ?? 0), '--seconds', String(o.seconds ?? 0)], { stdio: ['ignore', 'pipe', 'pipe'] });
  return peerWatch(child, true);
}

/** A bulk-peer client in ns to host:port. */
export async function peerSend(ns: string, to: string, o: { bytes?: number; seconds?: number }): Promise<{ child: ChildProcess; result: Promise<PeerResult> }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', BULK_PEER, 'send', '--to', to,
    '--bytes', String(o.bytes ?? 0), '--seconds', String(o.seconds ?? 0)], { stdio: ['ignore', 'pipe', 'pipe'] });
  return peerWatch(child, false);
}

function peerWatch(child: ChildProcess, waitReady: boolean): Promise<{ child: ChildProcess; result: Promise<PeerResult> }> {
  // stopped by stopAllChildren (scripts/harness.ts) when a test or benchmark ends early
  liveChildren.add(child);
  child.on('exit', () => liveChildren.delete(child));
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let ready: () => void = () => {};
  let failed: (e: Error) => void = () => {};
  const isReady = new Promise<void>((res, rej) => {
    ready = res;
    failed = rej;
  });
  const result = new Promise<PeerResult>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l === 'ready') ready();
      else if (l.startsWith('{')) resolve(JSON.parse(l) as PeerResult);
    });
    // 'close', not 'exit': the result line may still be in the pipe when the process has exited
    child.on('close', (code) => {
      const e = new Error(`bulk-peer exited (${code}) without a result: ${stderr}`);
      failed(e);
      reject(e);
    });
  });
  result.catch(() => {});
  if (!waitReady) ready();
  return isReady.then(() => ({ child, result }));
}
