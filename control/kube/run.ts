/**
 * `tunproxy run --kubernetes`: the agent inside the tunproxy process. The
 * rule sets it builds go through the holder adapter (adapter.ts); node setup
 * (nodesetup.ts) follows each sync when asked for; SIGINT/SIGTERM stop the
 * watches and the health servers and undo the node setup.
 */
import { hostname } from 'node:os';
import type { Registry } from 'prom-client';
import type { RuleSetHolder } from '../runtime.ts';
import { holderSink } from './adapter.ts';
import type { KubeAgent } from './agent.ts';
import { NodeSetup } from './nodesetup.ts';
// the agent (and @kubernetes/client-node, a large library) is loaded by `run --kubernetes` only, not by every command

export interface KubeRunOptions {
  tun: string;
  kubernetes?: boolean;
  kubeconfig?: string;
  hostnameOverride?: string;
  minSyncPeriod: string;
  healthzBindAddress: string;
  nodeSetup?: boolean;
  dryRun?: boolean;
}

/** "1s", "500ms", "2m", "0", "1.5s" (a Go duration, as kube-proxy takes it) → milliseconds */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m || (m[2] === undefined && Number(m[1]) !== 0)) throw new Error(`${flag}: ${JSON.stringify(text)} is not a duration like 1s, 500ms, 0`);
  const n = Number(m[1]);
  return n * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : m[2] === 'h' ? 3_600_000 : 1000);
}

/** Check the flags before anything starts (a bad flag fails the command at once). */
export function checkKubeFlags(o: KubeRunOptions & { rules?: string }): void {
  if (!o.kubernetes) {
    for (const f of ['kubeconfig', 'hostnameOverride', 'nodeSetup'] as const) if (o[f] !== undefined) throw new Error(`--${f.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} needs --kubernetes`);
    return;
  }
  if (o.rules !== undefined) throw new Error('--rules and --kubernetes exclude each other: with --kubernetes the rules come from the cluster');
  if (o.dryRun && !o.nodeSetup) throw new Error('--dry-run shows what --node-setup would do: give --node-setup too');
  parseDuration(o.minSyncPeriod, '--min-sync-period');
}

/** A running agent: stop() ends the watches and the health servers and undoes the node setup. */
export interface KubeRunning {
  agent: KubeAgent;
  stop(): Promise<void>;
}

/**
 * Runs in tunproxy run's control worker (control/worker/control-worker.ts), beside the API: the
 * holder is the one whose swaps reach the packet thread. Signals do not reach a worker thread: the
 * packet thread's SIGINT/SIGTERM handler asks the worker to stop, which calls stop().
 */
export async function startKubernetes(
  holder: RuleSetHolder,
  o: KubeRunOptions,
  registry: Registry | undefined,
  log: (msg: string) => void,
  inForce?: (generation: number) => Promise<void>,
): Promise<KubeRunning> {
  const nodeName = (o.hostnameOverride ?? process.env.NODE_NAME ?? hostname()).trim().toLowerCase();
  const setup = o.nodeSetup ? new NodeSetup({ tun: o.tun, dryRun: !!o.dryRun, log }) : null;
  const { KubeAgent } = await import('./agent.ts');
  const agent = new KubeAgent({
    kubeconfigFile: o.kubeconfig,
    nodeName,
    sink: holderSink(holder, inForce),
    minSyncPeriodMs: parseDuration(o.minSyncPeriod, '--min-sync-period'),
    healthzBindAddress: o.healthzBindAddress === '' ? null : o.healthzBindAddress,
    registry,
    log: (m) => log(`kubernetes: ${m}`),
    onSync: (r) => {
      if (setup && r.result && holder.ruleSet) setup.update(holder.ruleSet);
    },
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    setup?.undo();
    await agent.stop();
  };
  await agent.start();
  return { agent, stop };
}
