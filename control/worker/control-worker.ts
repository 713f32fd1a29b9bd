/**
 * The control worker of `tunproxy run` (a node:worker_threads thread): the
 * HTTP API (fastify on the Unix socket and the TCP listener), the body
 * parse, validation, compile and the incremental path (RuleSetHolder),
 * imports, the rule-set file (--rules, SIGHUP reload) and the rule set saved
 * in --state-dir. None of it runs on the packet thread: compiled tables go
 * there as shared arrays (RemotePacketSide.sendTables), and what the API
 * needs of the packet thread (counters, connection table) it asks by
 * messages, answered in slices (host.ts).
 *
 * Messages from the packet thread (besides the replies of RemotePacketSide):
 *   {ctl: 'start-api'}  serve the API now (the TUN device is open)
 *   {ctl: 'reload'}     SIGHUP: reload --rules
 *   {ctl: 'stop'}       close the API, flush the state directory, answer {ev: 'stopped'}
 * To the packet thread:
 *   {ev: 'rules', generation}   the start-up rule set is in force (0: none yet)
 *   {ev: 'api', socketPath, tcp} | {ev: 'api', error}
 *   {ev: 'fatal', message}           the start failed (a bad --rules, a bad --state-dir)
 *   {ev: 'stopped'}
 */
import { parentPort, workerData } from 'node:worker_threads';
import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { RuleSetHolder } from '../runtime.ts';
import { readRuleSetFile } from '../load.ts';
import { RuleSetError } from '../validate.ts';
import { DEFAULT_STATE_DIR, StateStore } from '../persist.ts';
import { shareTables } from '../../dataplane/tables-wire.ts';
import { writeIptables } from '../iptables/writer.ts';
import { startApi } from '../server.ts';
import type { ApiServer } from '../server.ts';
import { RemotePacketSide } from './remote.ts';
import { prepareCopies } from '../compile.ts';
import { processTrimmer } from '../malloc-trim.ts';
import type { KubeRunOptions, KubeRunning } from '../kube/run.ts';

export interface ControlWorkerData {
  tun: string;
  rules?: string;
  stateDir: string;
  socket: string;
  /** the socket was asked for (--socket or --listen): failing to serve it fails the start */
  socketExplicit: boolean;
  socketMode: number;
  listen?: string;
  token?: string;
  maxBody: number;
  decider: 'compiled' | 'linear';
  /** --packet-priority fifo: the packet thread runs before this one anyway, so this one keeps its nice (+10 would only starve the compiles on a busy machine) */
  keepNice?: boolean;
  /** --kubernetes: the node agent runs here, beside the API (control/kube/run.ts) */
  kube?: KubeRunOptions;
}

const port = parentPort!;

/** Log lines go to the packet thread on the same port as the events, so they keep their order with them. */
function log(msg: string): void {
  port.postMessage({ ev: 'log', msg });
}

const o = workerData as ControlWorkerData;
const remote = new RemotePacketSide(port);
// --decider linear: the rules go to the packet thread as iptables-restore text (the walk is a graph
// of objects, which cannot cross threads; the text is its wire form), written once from the model
// here and built into the walk there: the holder itself builds none
const holder = new RuleSetHolder({ prepare: shareTables });
holder.onSwap((t) => {
  const m = holder.model!;
  const linear = o.decider === 'linear' ? { text: writeIptables(m), text6: t.v6 ? writeIptables(m, { family: 6 }) : null, localAddresses: m.node.addresses } : null;
  remote.sendTables(t, linear).catch((e: Error) => log(`generation ${t.generation} did not reach the packet thread: ${e.message}`));
});
// What a full apply leaves to the first change to build (holder.prepareIncremental: at 10 000 services,
// ~12 of the first one-service change's ~64 ms), built once the worker has been idle 200 ms after a swap;
// and the buffers of the copies that change makes (compile.ts prepareCopies: at 100 000 services, ~13 MB
// whose first touch would otherwise be paid by the change, ~3 ms per MB on the AMD machine)
let prepareTimer: NodeJS.Timeout | null = null;
holder.onSwap(() => {
  if (prepareTimer !== null) clearTimeout(prepareTimer);
  prepareTimer = setTimeout(() => {
    prepareTimer = null;
    holder.prepareIncremental();
    if (holder.current !== null) prepareCopies(holder.current);
  }, 200);
  prepareTimer.unref();
});
// the C heap's free pages given back once a minute (control/malloc-trim.ts): what glibc's arenas keep free does not stay resident
processTrimmer.start();
let api: ApiServer | null = null;
let kube: KubeRunning | null = null;
let store: StateStore | null = null;

function start(): void {
  store = new StateStore(o.stateDir, `${o.tun}.`);
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
    holder.resumeGeneration(store.loadGeneration());
    const st = store;
    holder.onSwap(() => {
      const rs = holder.ruleSet;
      if (rs !== null) st.saveRuleSet(rs, holder.generation).catch((e: Error) => log(`${e.message} (the rules stay in force; the next change retries)`));
    });
  }
  if (o.rules !== undefined) {
    try {
      const r = holder.apply(readRuleSetFile(o.rules));
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
      const r = holder.apply(saved.ruleSet);
      const changes = saved.journal.records > 0 ? ` with ${saved.journal.records} change${saved.journal.records === 1 ? '' : 's'} from ${store.journalPath}` : '';
      log(`rule set saved in ${saved.path}${changes} (${saved.savedAt.toISOString()}): generation ${r.generation}, ${r.services} services, compiled in ${r.compileMs.toFixed(1)} ms`);
      if (saved.journal.note !== null) log(saved.journal.note);
    } else if (saved.status === 'damaged') {
      log(`the saved rule set ${saved.path} is damaged (${saved.reason}): moved to ${saved.movedTo}; waiting for a rule set through the API (tunproxy apply -f FILE)`);
    } else {
      log(`no --rules and no saved rule set in ${o.stateDir}: waiting for one through the API (tunproxy apply -f FILE)`);
    }
  }
}

async function startApiNow(): Promise<void> {
  try {
    api = await startApi({ holder, packets: remote }, { socket: o.socket, socketMode: o.socketMode, listen: o.listen, token: o.token, store, requireLoop: true, bodyLimit: o.maxBody });
    port.postMessage({ ev: 'api', socketPath: api.socketPath, tcp: api.tcp });
  } catch (e) {
    port.postMessage({ ev: 'api', error: (e as Error).message });
  }
  if (o.kube?.kubernetes) {
    try {
      // @kubernetes/client-node is loaded only here, with --kubernetes
      const { startKubernetes } = await import('../kube/run.ts');
      kube = await startKubernetes(holder, o.kube, api?.metrics.registry, log, (g) => remote.whenInForce(g));
    } catch (e) {
      log(`kubernetes: the agent did not start: ${(e as Error).message}`);
    }
  }
}

function reload(): void {
  if (o.rules === undefined) return log('SIGHUP: no --rules file to reload (change the rules with tunproxy apply)');
  try {
    const r = holder.apply(readRuleSetFile(o.rules));
    log(`reloaded ${o.rules}: generation ${r.generation}, ${r.services} services, compiled in ${r.compileMs.toFixed(1)} ms`);
  } catch (e) {
    log(`reload of ${o.rules} rejected, generation ${holder.generation} stays in force: ${(e as Error).message}`);
  }
}

async function stop(): Promise<void> {
  try {
    await kube?.stop();
    await store?.close();
    if (api) await api.close();
  } finally {
    port.postMessage({ ev: 'stopped' });
  }
}

port.on('message', (m: { ctl?: string }) => {
  if (remote.handle(m)) return;
  switch (m.ctl) {
    case 'start-api':
      void startApiNow();
      break;
    case 'reload':
      reload();
      break;
    case 'stop':
      void stop();
      break;
  }
});

/** This thread's Linux thread id (-1: not Linux). */
function ownTid(): number {
  try {
    const m = /\/task\/(\d+)$/.exec(readlinkSync('/proc/thread-self'));
    return m !== null ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
}

/**
 * This thread at a lower CPU priority than the packet thread (nice +10, Linux
 * applies it per thread): on a busy machine a compile waits, packets do not.
 * Not with --packet-priority fifo (keepNice), where the packet thread runs
 * first whatever this one's nice.
 */
function lowerPriority(tid: number): void {
  if (o.keepNice || tid < 0) return;
  try {
    setPriority(tid, Math.min(19, getPriority(tid) + 10));
  } catch {
    // not allowed: same priority
  }
}

const tid = ownTid();
lowerPriority(tid);
try {
  start();
  port.postMessage({ ev: 'rules', generation: holder.current?.generation ?? 0 });
} catch (e) {
  port.postMessage({ ev: 'fatal', message: (e as Error).message });
}
