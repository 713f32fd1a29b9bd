/**
 * `tunproxy run`: attach to a TUN device, load the rule set, move packets.
 * SIGHUP reloads the rules file (a rejected file leaves the running rules in
 * force and says why); SIGINT/SIGTERM stop cleanly; a one-line status is
 * printed every --status-interval seconds and on SIGUSR1.
 *
 * The control API (control/server.ts) is served on a Unix socket
 * (--socket, /run/tunproxy/<tun>.sock by default) and, with --listen and
 * --token-file, on TCP. The rule set in force is saved in --state-dir after
 * every change; without --rules, the saved one is loaded at start (with
 * neither, tunproxy waits for one through the API). On SIGTERM/SIGINT the
 * connection table is saved there and restored on the next start.
 */
import type { Command } from 'commander';
import { Dataplane } from '../dataplane.ts';
import { readRuleSetFile } from '../load.ts';
import { RuleSetError } from '../validate.ts';
import { TunDevice } from '../../dataplane/tun/index.ts';
import { DEFAULT_STATE_DIR, StateStore } from '../persist.ts';
import type { ApiServer } from '../server.ts';

import { DEFAULT_BODY_LIMIT } from '../api/context.ts';
import { kubernetesFor } from '../kube/run.ts';
import type { KubeRunOptions } from '../kube/run.ts';
// the API server itself (fastify, prom-client) is loaded by `run` only, not by the client commands

export interface RunOptions extends KubeRunOptions {
  decider: string;
  tun: string;
  rules?: string;
  stateDir: string;
  socket?: string;
  socketMode: string;
  listen?: string;
  tokenFile?: string;
  maxBody: string;
  batch: string;
  statusInterval: string;
  conntrackMax: string;
  multiQueue?: boolean;
}

function log(msg: string): void {
  process.stderr.write(`tunproxy: ${msg}\n`);
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('attach to a TUN device and serve the services of a rule set (JSON or YAML)')
    .requiredOption('-t, --tun <name>', 'TUN device to attach to (created if missing; the lab creates it persistent)')
    .option('-r, --rules <file>', 'rule set file, reloaded on SIGHUP (default: the rule set saved in --state-dir; with neither, wait for one through the API)')
    .option('--state-dir <dir>', 'where the rule set in force and, on SIGTERM, the connection table are saved', DEFAULT_STATE_DIR)
    .option('--socket <path>', 'Unix socket of the control API (default /run/tunproxy/<tun>.sock)')
    .option('--socket-mode <octal>', 'permissions of the socket', '600')
    .option('--listen <host:port>', 'also serve the API on TCP (requires --token-file)')
    .option('--token-file <file>', 'bearer token the TCP listener requires (first line, at least 16 characters, file not readable by others)')
    .option('--max-body <bytes>', 'largest request body the API accepts for rule sets and imports', String(DEFAULT_BODY_LIMIT))
    .option('--batch <n>', 'packets per read/write system call', '64')
    .option('--status-interval <seconds>', 'print a status line this often (0: only on SIGUSR1)', '10')
    .option('--conntrack-max <n>', 'connection table size, like nf_conntrack_max', '262144')
    .option('--multi-queue', 'open the TUN with IFF_MULTI_QUEUE (the device must have been created multi_queue)')
    .option('--decider <compiled|linear>', "how new flows are decided: the hash tables, or kube-proxy's iptables rules walked linearly (for comparison)", 'compiled')
    .option('--kubernetes', 'take the rules from the cluster: list and watch Services, EndpointSlices and this Node, like kube-proxy (in-cluster service account, or --kubeconfig)')
    .option('--kubeconfig <file>', 'with --kubernetes: the kubeconfig file (default: the in-cluster service account)')
    .option('--hostname-override <name>', "with --kubernetes: this node's name (default: $NODE_NAME, else the host name)")
    .option('--min-sync-period <duration>', 'with --kubernetes: at most one sync per this period; changes in between are coalesced (0: every change at once)', '1s')
    .option('--healthz-bind-address <host:port>', 'with --kubernetes: where /healthz (and /metrics) are served, like kube-proxy ("" : not served)', '0.0.0.0:10256')
    .option('--node-setup', 'with --kubernetes: steer the service traffic into the TUN (routes and policy rules), undone at stop')
    .option('--dry-run', 'with --node-setup: print the ip commands instead of running them')
    .addHelpText('after', `
Signals: SIGHUP reloads --rules (a rejected file keeps the rules in force),
SIGUSR1 prints the status and the connection table, SIGINT/SIGTERM save the
connection table in --state-dir and stop.

State: --state-dir holds <tun>.ruleset.json (the rule set in force, written
atomically after every change; loaded at start when --rules is not given; a
damaged file is renamed *.damaged-<time> and reported) and
<tun>.conntrack.json (saved on stop, restored and removed at start).

Example (inside the node namespace of the lab):
  tunproxy run --tun tun0 --rules examples/demo-ruleset.json
  tunproxy get services                 # through /run/tunproxy/tun0.sock

In a cluster, in kube-proxy's place (README "Running in a cluster", deploy/):
  tunproxy run --tun tun0 --kubernetes --hostname-override "$NODE_NAME" --node-setup`)
    .action((o: RunOptions) => run(o));
}

export async function run(o: RunOptions): Promise<void> {
  const batch = Number(o.batch);
  const interval = Number(o.statusInterval);
  const conntrackMax = Number(o.conntrackMax);
  const socketMode = parseInt(o.socketMode, 8);
  const maxBody = Number(o.maxBody);
  if (!Number.isInteger(batch) || batch < 1 || batch > 1024) throw new Error(`--batch: ${o.batch} must be an integer 1-1024`);
  if (!Number.isFinite(interval) || interval < 0) throw new Error(`--status-interval: ${o.statusInterval} must be a number of seconds >= 0`);
  if (!Number.isInteger(conntrackMax) || conntrackMax < 1) throw new Error(`--conntrack-max: ${o.conntrackMax} must be a positive integer`);
  if (!/^[0-7]{3}$/.test(o.socketMode)) throw new Error(`--socket-mode: ${o.socketMode} must be octal permissions like 600 or 660`);
  if (!Number.isInteger(maxBody) || maxBody < 1024) throw new Error(`--max-body: ${o.maxBody} must be a number of bytes >= 1024`);
  if (o.listen !== undefined && o.tokenFile === undefined) throw new Error('--listen needs --token-file: the TCP listener only serves requests with a bearer token');
  const kube = kubernetesFor(o);
  const { defaultSocketPath, readTokenFile, startApi } = await import('../server.ts');
  const token = o.tokenFile !== undefined ? readTokenFile(o.tokenFile) : undefined;

  if (o.decider !== 'compiled' && o.decider !== 'linear') throw new Error(`--decider: ${JSON.stringify(o.decider)} is not one of compiled, linear`);
  const dp = new Dataplane({ conntrackMax, decider: o.decider });
  let store: StateStore | null = new StateStore(o.stateDir, `${o.tun}.`);
  try {
    store.init();
  } catch (e) {
    // an explicit --state-dir must work; the default one missing (not root) only costs the persistence
    if (o.stateDir !== DEFAULT_STATE_DIR) throw e;
    log(`${(e as Error).message}: the rule set and the connection table are not saved (give a --state-dir)`);
    store = null;
  }
  // every rule set that comes into force (--rules, SIGHUP, the API) is saved
  if (store) {
    // generations go on from the last one saved: an If-Match from before a restart cannot match after it
    dp.holder.resumeGeneration(store.loadGeneration());
    const st = store;
    dp.holder.onSwap(() => {
      const rs = dp.holder.ruleSet;
      if (rs !== null) st.saveRuleSet(rs, dp.holder.generation).catch((e: Error) => log(`${e.message} (the rules stay in force; the next change retries)`));
    });
  }

  if (o.rules !== undefined) {
    try {
      const r = dp.holder.apply(readRuleSetFile(o.rules));
      log(`rule set ${o.rules}: generation ${r.generation}, ${r.services} services, ${r.servicePorts} service ports, compiled in ${r.compileMs.toFixed(1)} ms`);
    } catch (e) {
      if (e instanceof RuleSetError) throw new Error(`${o.rules}: ${e.message}`);
      throw e;
    }
    if (store?.hasRuleSet()) log(`--rules given: ${store.ruleSetPath} (the rule set saved by the last run) is replaced by it`);
  } else if (store === null) {
    log('no --rules and no state directory: waiting for a rule set through the API (tunproxy apply -f FILE)');
  } else {
    const saved = store.loadRuleSet();
    if (saved.status === 'ok') {
      const r = dp.holder.apply(saved.ruleSet);
      log(`rule set saved in ${saved.path} (${saved.savedAt.toISOString()}): generation ${r.generation}, ${r.services} services, compiled in ${r.compileMs.toFixed(1)} ms`);
    } else if (saved.status === 'damaged') {
      log(`the saved rule set ${saved.path} is damaged (${saved.reason}): moved to ${saved.movedTo}; waiting for a rule set through the API (tunproxy apply -f FILE)`);
    } else {
      log(`no --rules and no saved rule set in ${o.stateDir}: waiting for one through the API (tunproxy apply -f FILE)`);
    }
  }

  const tun = TunDevice.open(o.tun, { multiQueue: !!o.multiQueue });

  let api: ApiServer | null = null;
  const socket = o.socket ?? defaultSocketPath(o.tun);
  try {
    api = await startApi(dp, { socket, socketMode, listen: o.listen, token, store, requireLoop: true, bodyLimit: maxBody });
  } catch (e) {
    if (o.socket !== undefined || o.listen !== undefined) {
      tun.close();
      throw e;
    }
    // the default socket is taken (another tunproxy on a device of this name, in another namespace) or cannot be made
    log(`control API not started: ${(e as Error).message}`);
  }
  if (api) log(`control API on ${[api.socketPath, api.tcp ? `http://${api.tcp.host}:${api.tcp.port} (bearer token)` : null].filter((x) => x).join(' and ')}`);

  if (kube) await kube.start(dp.holder, api?.metrics.registry, log);

  const restoreConntrack = () => {
    if (store === null) return;
    const saved = store.loadConntrack();
    if (saved.status === 'none') return;
    if (saved.status === 'damaged') return log(`the saved connection table ${saved.path} is damaged (${saved.reason}): moved to ${saved.movedTo}; starting with an empty table`);
    if (saved.status === 'foreign') return log(`the saved connection table ${saved.path} is not restored: ${saved.reason}`);
    try {
      const n = dp.pipeline.conntrack.restore(saved.items);
      store.consumeConntrack();
      log(`connection table restored from ${saved.path}: ${n} flows (saved ${(saved.elapsedMs / 1000).toFixed(1)} s ago; ${saved.expired} ran out meanwhile)`);
    } catch (e) {
      const moved = store.setAsideConntrack();
      log(`the saved connection table ${saved.path} is damaged (${(e as Error).message}): moved to ${moved}; starting with an empty table`);
    }
  };
  const attach = () => {
    restoreConntrack();
    dp.attach(tun, { batch });
    log(`attached to ${tun.name}, batch ${batch}; ready`);
  };
  const status = () => log(dp.statusLine());
  const timer = interval > 0 ? setInterval(status, interval * 1000) : null;
  let lastDrops = 0;
  const dropTimer = setInterval(() => {
    const d = dp.pipeline.counters.drops.reduce((a, b) => a + b, 0);
    if (d !== lastDrops) {
      const s = dp.pipeline.counters.snapshot();
      log(`drops: ${Object.entries(s.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ')}${Object.keys(s.malformed).length ? ` malformed: ${JSON.stringify(s.malformed)}` : ''}`);
      lastDrops = d;
    }
  }, 1000);
  dropTimer.unref();

  process.on('SIGHUP', () => {
    if (o.rules === undefined) return log('SIGHUP: no --rules file to reload (change the rules with tunproxy apply)');
    try {
      const r = dp.holder.apply(readRuleSetFile(o.rules));
      log(`reloaded ${o.rules}: generation ${r.generation}, ${r.services} services, compiled in ${r.compileMs.toFixed(1)} ms`);
    } catch (e) {
      log(`reload of ${o.rules} rejected, generation ${dp.holder.generation} stays in force: ${(e as Error).message}`);
    }
  });
  process.on('SIGUSR1', () => {
    status();
    process.stderr.write(dp.pipeline.conntrack.list());
  });
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = async (sig: string) => {
      if (stopping) return;
      stopping = true;
      log(`${sig}: stopping`);
      if (timer) clearInterval(timer);
      clearInterval(dropTimer);
      const attached = dp.loop !== null;
      dp.detach();
      const ts = tun.stats();
      tun.close();
      if (attached && store) {
        try {
          const items = dp.pipeline.conntrack.snapshot();
          store.saveConntrack(items);
          log(`connection table saved to ${store.conntrackPath}: ${items.length} flows`);
        } catch (e) {
          log(`cannot save the connection table to ${store.conntrackPath}: ${(e as Error).message}`);
        }
      }
      await store?.flush();
      if (api) await api.close();
      log(`final: ${dp.statusLine()} tun rx=${ts.rxPackets} tx=${ts.txPackets} tx_again=${ts.txAgain} tx_errors=${ts.txErrors}`);
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
    // only now, with every signal handler in place, say "ready": a supervisor that signals as soon as
    // it reads it must not find Node's defaults (SIGUSR1 would start the inspector, SIGTERM would kill)
    if (dp.holder.current !== null) attach();
    else {
      // the first rule set through the API starts the packets moving
      let pending = true;
      dp.holder.onSwap(() => {
        if (!pending) return;
        pending = false;
        setImmediate(attach);
      });
    }
  });
}
