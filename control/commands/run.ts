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
 *
 * Two threads: this one moves packets; a control worker
 * (control/worker/control-worker.ts) serves the API, reads, validates,
 * compiles and saves rule sets, and sends the tables here as shared arrays
 * (see README "Two threads").
 */
import type { Command } from 'commander';
import { DEFAULT_STATE_DIR } from '../persist.ts';
import type { StateStore } from '../persist.ts';
import type { PinnedTable, PinnedTableConntrack } from '../../dataplane/conntrack-pinned.ts';
import type { PinnedConntrack6 } from '../../dataplane/conntrack-pinned6.ts';
import type { TunDevice } from '../../dataplane/tun/index.ts';
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { DEFAULT_PIN_DIR } from '../../dataplane/pin/index.ts';
import { defaultHolderSocketPath } from './tun-holder.ts';

// control/api/context.ts's DEFAULT_BODY_LIMIT, repeated so that `tunproxy --help` does not load the API (test/unit/cli-dist.test.ts checks they agree)
export const DEFAULT_BODY_LIMIT = 64 * 1024 * 1024;
import { checkKubeFlags } from '../kube/run.ts';
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
  offload: string;
  pin: boolean;
  pinDir: string;
  packetPriority: string;
  txqueuelen: string;
  packetCpu?: string;
  packetNap?: string;
  /** --tun-holder [socket]: take the TUN's open file from a `tunproxy tun-holder` (true: its default socket) */
  tunHolder?: string | boolean;
}

function pidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
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
    .option('--pin-dir <dir>', 'where the connection table is pinned: <dir>/<tun>.ct (IPv4 flows) and <dir>/<tun>.ct6 (IPv6 flows), files in memory that outlive the process (a crash or kill -9 keeps the connections of both families)', DEFAULT_PIN_DIR)
    .option('--no-pin', 'keep the connection table in the process only (a crash loses it; SIGTERM still saves it in --state-dir)')
    .option('--multi-queue', 'open the TUN with IFF_MULTI_QUEUE (the device must have been created multi_queue)')
    .option('--tun-holder [socket]', "take the TUN's open file from a `tunproxy tun-holder` on this Unix socket (default /run/tunproxy/<tun>.holder.sock) instead of opening the device: while this process restarts the holder keeps the device attached, so packets wait in its queue instead of being dropped; no holder there is an error, never a silent fallback")
    .option('--decider <compiled|linear>', "how new flows are decided: the hash tables, or kube-proxy's iptables rules walked linearly, ip6tables ones for IPv6 packets (for comparison)", 'compiled')
    .option('--offload <auto|off>', 'auto: open the TUN with a virtio-net header and take checksum, TCP (TSO4/6, ECN) and UDP (USO4/6) segmentation offloads, so bulk traffic moves as 64 KiB super-packets (what the kernel refuses is said at start); off: one MTU packet per read', 'auto')
    .option('--packet-priority <none|nice:N|fifo:N>', "CPU priority of the packet thread alone: nice:N (-20..19) or fifo:N (SCHED_FIFO 1..99, above every ordinary task, like the kernel's own packet processing); needs root or CAP_SYS_NICE. On a busy machine a stall of the packet thread is packets queued in the TUN, or lost (README \"Packets that never wait\")", 'none')
    .option('--packet-cpu <n>', 'run the packet thread on CPU n alone, and the control worker and every other thread of the process (V8\'s, libuv\'s) on the other CPUs (with --packet-priority fifo, the worker is then never preempted by the packet thread while it hands a message over)')
    .option('--packet-nap <BUSY/NAP|off>', "with --packet-priority fifo: in its control work (a swap's snapshot, the sweeps after it, listings), after BUSY ms on its CPU without waiting NAP ms, the packet thread sleeps NAP ms (default 2/0.2; never between batches of packets). A real-time thread that holds its CPU starves the ordinary tasks there, and the kernel (its fair server) then takes the CPU from it for up to 50 ms at once; off where no ordinary task can run on that CPU (isolcpus, an exclusive cpuset)")
    .option('--txqueuelen <packets>', "set the TUN device's queue (Linux's default for a TUN: 500 packets) to this many packets: what waits while the packet thread is held up instead of being dropped (0: keep the device's)", '0')
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

Threads: the packets move on the main thread; the API, the rule-set parse,
validation, compile, imports and saves run in a control worker thread, and
every piece of work the packet thread does for it is cut in slices of 1 ms.
On a busy machine: --packet-priority fifo:10 --packet-cpu N --txqueuelen 10000,
and node's --no-memory-reducer (node --no-memory-reducer bin/tunproxy.js run
...): README "Packets that never wait".

Pinned connection table: every IPv4 flow is also a record in
--pin-dir/<tun>.ct and every IPv6 flow in --pin-dir/<tun>.ct6 (/dev/shm:
memory, not disk), written as packets change it. A tunproxy that starts after
a crash or kill -9 checks each file (boot, network namespace, layout version,
header checksum; a per-record sequence and checksum) and goes on with its
flows; a file it cannot trust is renamed *.set-aside-<time> and reported,
with the family it held. Several tunproxy processes in different network namespaces with the
same device name need different --pin-dir. A TUN device that tunproxy creates
is made persistent, so its addresses and routes stay while tunproxy restarts.

The device's queue across restarts: Linux drops what is routed into a TUN
that no process holds open. Run \`tunproxy tun-holder --tun <tun>\` (a
process of its own, started first and left running) and start run with
--tun-holder: run then takes a duplicate of the holder's open file
(SCM_RIGHTS) instead of opening the device, and while run restarts (SIGTERM,
kill -9, a crash, an upgrade) the packets wait in the device's queue
(--txqueuelen of them) and are read by the next run. The holder must use the
same --offload and --multi-queue; a holder that is not there fails the start
(say --tun-holder only where one runs).

State: --state-dir holds <tun>.ruleset.json (the rule set, written
atomically; loaded at start when --rules is not given; a damaged file is
renamed *.damaged-<time> and reported), <tun>.ruleset.journal (a change of a
few services is a line appended to it, synced before the answer, instead of
the whole rule set written again; the file and its journal together are the
rule set in force; the journal is folded into the file 5 s after the last
change, when it outgrows half of it, and at start; a change of the node's
fields is written whole), <tun>.generation and
<tun>.conntrack.json (the IPv4 and the IPv6 flows, saved on stop, restored
and removed at start; a pinned table recovered at start supersedes its
family's part).

Example (inside the node namespace of the lab):
  tunproxy run --tun tun0 --rules examples/demo-ruleset.json
  tunproxy get services                 # through /run/tunproxy/tun0.sock

In a cluster, in kube-proxy's place (README "Running in a cluster", deploy/):
  tunproxy run --tun tun0 --kubernetes --hostname-override "$NODE_NAME" --node-setup`)
    .action((o: RunOptions) => run(o));
}

/**
 * Two threads: this one (the packet thread) runs the loop, the pipeline and
 * the connection table, and answers the control worker in slices of at most
 * SLICE_MS (control/worker/host.ts); the control worker
 * (control/worker/control-worker.ts) serves the API, reads --rules,
 * validates, compiles, imports and saves the rule set.
 */
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
  checkKubeFlags(o);
  const { parsePacketPriority, raisePacketThread } = await import('../worker/priority.ts');
  const priority = parsePacketPriority(o.packetPriority ?? 'none');
  const { parseTxQueueLen, prepareDevice } = await import('../worker/priority.ts');
  const txqueuelen = parseTxQueueLen(o.txqueuelen ?? '0');
  const { parsePacketCpu, pinPacketThread, collectBeforeStart } = await import('../worker/priority.ts');
  const packetCpu = parsePacketCpu(o.packetCpu);
  const { parsePacketNap } = await import('../../dataplane/cpu-share.ts');
  const packetNap = parsePacketNap(o.packetNap ?? '2/0.2');
  const { defaultSocketPath, readTokenFile } = await import('../api/local.ts');
  const token = o.tokenFile !== undefined ? readTokenFile(o.tokenFile) : undefined;
  if (o.offload !== 'auto' && o.offload !== 'off') throw new Error(`--offload: ${JSON.stringify(o.offload)} is not one of auto, off`);
  if (o.decider !== 'compiled' && o.decider !== 'linear') throw new Error(`--decider: ${JSON.stringify(o.decider)} is not one of compiled, linear`);
  const socket = o.socket ?? defaultSocketPath(o.tun);
  // The control worker's thread starts first: its modules, the rule set and the API (~600 ms on the AMD
  // machine) come up while this thread loads the dataplane and opens the pinned tables, instead of after
  // (ready 80-110 ms sooner: medians of 10 interleaved starts, 1 205 -> 1 125 and 1 200 -> 1 094 ms, AMD machine).
  // What it sends meanwhile waits for the ControlWorker below.
  const { ControlWorker, ControlThread } = await import('../worker/spawn.ts');
  const thread = new ControlThread({
    tun: o.tun,
    rules: o.rules,
    stateDir: o.stateDir,
    socket,
    socketExplicit: o.socket !== undefined || o.listen !== undefined,
    socketMode,
    listen: o.listen,
    token,
    maxBody,
    decider: o.decider,
    keepNice: priority.kind === 'fifo',
    kube: o.kubernetes
      ? { tun: o.tun, kubernetes: true, kubeconfig: o.kubeconfig, hostnameOverride: o.hostnameOverride, minSyncPeriod: o.minSyncPeriod, healthzBindAddress: o.healthzBindAddress, nodeSetup: o.nodeSetup, dryRun: o.dryRun }
      : undefined,
  });
  // the dataplane is loaded by `run` only (the other commands start faster without it)
  const [{ Dataplane }, { TunDevice }, { StateStore, restoreConntrackParts }, { FlowLister, unpackChunk, formatFlowL }, { watchEventLoop }, { PIN_CLOSED, PinnedTable }, { openPinnedTable6 }, { serviceNames }] = await Promise.all([
    import('../dataplane.ts'), import('../../dataplane/tun/index.ts'), import('../persist.ts'), import('../worker/flows.ts'),
    import('../worker/packet-side.ts'), import('../../dataplane/conntrack-pinned.ts'), import('../../dataplane/conntrack-pinned6.ts'), import('../../dataplane/tables-wire.ts'),
  ]);
  /** SIGUSR1's listing of the connection table: written in slices (FlowLister), never built whole. */
  const listConntrackToStderr = (dp: InstanceType<typeof Dataplane>): Promise<void> => {
    const lister = new FlowLister(dp.pipeline.conntrack, () => true, Infinity, dp.pipeline.conntrackV6, () => true);
    return new Promise((resolve) => {
      const slice = () => {
        const c = lister.next();
        let text = '';
        for (const f of unpackChunk(c)) text += formatFlowL(f, c.now) + '\n';
        const more = () => (c.done ? resolve() : setImmediate(slice));
        if (text === '' || process.stderr.write(text)) more();
        else process.stderr.once('drain', more);
      };
      slice();
    });
  };

  const clock = () => performance.now();
  let pinned: PinnedTable | null = null;
  // the IPv6 flows, pinned beside the IPv4 ones in <tun>.ct6 (dataplane/conntrack-pinned6.ts)
  let pinned6: PinnedTable<PinnedConntrack6> | null = null;
  if (o.pin) {
    try {
      pinned = PinnedTable.open({ dir: o.pinDir, name: `${o.tun}.ct`, maxEntries: conntrackMax, clock });
    } catch (e) {
      log(`cannot pin the connection table in ${o.pinDir}: ${(e as Error).message}; it lives in the process only (a crash loses it)`);
    }
    try {
      pinned6 = openPinnedTable6({ dir: o.pinDir, name: `${o.tun}.ct6`, maxEntries: conntrackMax, clock });
    } catch (e) {
      log(`cannot pin the IPv6 connection table in ${o.pinDir}: ${(e as Error).message}; it lives in the process only (a crash loses it)`);
    }
  }
  // a start that fails, or a stop before any rule set came, leaves the tables found at start untouched
  if (pinned || pinned6) process.once('exit', () => {
    pinned?.abandon();
    pinned6?.abandon();
  });
  const dp = new Dataplane({ conntrackMax, decider: o.decider, clock, conntrack: pinned?.conntrack, conntrack6: pinned6?.conntrack });
  watchEventLoop(dp);
  // the connection table's part of the state directory (the rule set's part is the control worker's)
  let store: StateStore | null = new StateStore(o.stateDir, `${o.tun}.`);
  try {
    store.init();
  } catch {
    store = null; // the control worker says why (or fails the start for an explicit --state-dir)
  }
  const existed = existsSync(`/sys/class/net/${o.tun}`);
  const cw = new ControlWorker(dp, thread);
  let stopping = false;
  cw.on('worker-error', (e: Error) => log(`the control worker failed: ${e.stack ?? e.message}; packets keep moving with the rules in force, the API is gone`));
  cw.on('exit', (code: number) => {
    if (!stopping) log(`the control worker exited (code ${code}); packets keep moving with the rules in force, the API is gone`);
  });
  const first = await cw.next('rules', 'fatal');
  if (first.ev === 'fatal') {
    stopping = true;
    await cw.worker.terminate();
    throw new Error(String(first.message));
  }
  await cw.inForce(dp, Number(first.generation));

  let tun: TunDevice;
  // --tun-holder: the open file of a `tunproxy tun-holder` (control/commands/tun-holder.ts), which keeps the
  // device attached while this process restarts, so packets wait in its queue; else the device opened here
  const holder = o.tunHolder === undefined || o.tunHolder === false ? null : o.tunHolder === true ? defaultHolderSocketPath(o.tun) : o.tunHolder;
  try {
    if (holder !== null) {
      tun = TunDevice.fromHolder(holder, { name: o.tun, multiQueue: !!o.multiQueue, vnetHdr: o.offload === 'auto' });
      log(`${tun.name} taken from the holder on ${holder}: packets wait in its queue while tunproxy restarts`);
    } else tun = TunDevice.open(o.tun, { multiQueue: !!o.multiQueue, vnetHdr: o.offload === 'auto' });
  } catch (e) {
    stopping = true;
    await cw.stop();
    const err = e as NodeJS.ErrnoException;
    if (holder !== null) {
      const none = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
      throw new Error(`--tun-holder ${holder}: ${err.message}${none ? ` (start \`tunproxy tun-holder --tun ${o.tun} --socket ${holder}\` first, or start without --tun-holder)` : ''}`, { cause: e });
    }
    if (err.code === 'EBUSY' && existsSync(defaultHolderSocketPath(o.tun))) err.message += ` (a tunproxy tun-holder serves on ${defaultHolderSocketPath(o.tun)}: start with --tun-holder)`;
    throw e;
  }
  // created here: persistent, so its addresses and routes stay while tunproxy restarts (the holder keeps its queue)
  try {
    prepareDevice(tun, { created: !existed && holder === null, txqueuelen, who: 'tunproxy', log });
  } catch (e) {
    stopping = true;
    await cw.stop();
    throw e;
  }
  if (o.offload === 'auto') {
    const r = tun.enableOffloads();
    log(`offloads on ${tun.name}: ${r.on.length ? r.on.join(', ') : 'none'}${r.refused.length ? ` (refused by the kernel, so off: ${r.refused.join(', ')})` : ''}`);
  } else {
    // offloads are the device's: clear what an earlier process (tunproxy --offload auto, a C forwarder -v) set,
    // or the kernel would keep handing over partial checksums, which without a virtio header nobody completes
    tun.setOffload(0);
    log(`offloads on ${tun.name}: off (--offload off)`);
  }
  cw.post({ ctl: 'start-api' });
  const a = await cw.next('api');
  // every thread exists now (the control worker, V8's and libuv's): raise this one alone
  try {
    if (priority.kind !== 'none') log(await raisePacketThread(priority));
    if (packetCpu >= 0) log(pinPacketThread(packetCpu));
    if (priority.kind === 'fifo' && packetNap !== null) {
      const { packetCpuShare } = await import('../../dataplane/cpu-share.ts');
      packetCpuShare.enable(packetNap.busyMs, packetNap.napMs);
      log(`the packet thread sleeps ${packetNap.napMs} ms after ${packetNap.busyMs} ms on its CPU without a wait, in its control work (--packet-nap): the ordinary tasks there get their share in short slices, and the kernel does not take the CPU from it for long`);
    } else if (o.packetNap !== undefined && o.packetNap !== 'off') log(`--packet-nap ${o.packetNap} has no effect without --packet-priority fifo (an ordinary thread shares its CPU by itself)`);
  } catch (e) {
    tun.close();
    stopping = true;
    await cw.stop();
    throw e;
  }
  if (a.error !== undefined) {
    if (o.socket !== undefined || o.listen !== undefined) {
      tun.close();
      stopping = true;
      await cw.stop();
      throw new Error(String(a.error));
    }
    // the default socket is taken (another tunproxy on a device of this name, in another namespace) or cannot be made
    log(`control API not started: ${String(a.error)}`);
  } else {
    const tcp = a.tcp as { host: string; port: number } | null;
    log(`control API on ${[a.socketPath, tcp ? `http://${tcp.host}:${tcp.port} (bearer token)` : null].filter((x) => x).join(' and ')}`);
  }

  /** The pinned table of one family found at start: recovered, set aside or new; true when recovered. */
  const finishPinned = (p: PinnedTable<PinnedTableConntrack> | null, label: string, names: string[]): boolean => {
    if (p === null) return false;
    const f = p.finish(names);
    if (f.status === 'set-aside') log(`the pinned ${label} is not trusted (${f.reason}): moved to ${f.movedTo}; starting with an empty table`);
    else if (f.status === 'recovered') {
      const r = f.recovery;
      let how = f.header.state === PIN_CLOSED ? 'stopped cleanly' : 'did not stop cleanly';
      if (f.header.state !== PIN_CLOSED && f.header.pid !== process.pid && pidRunning(f.header.pid)) how += `, and a process of that pid still runs: two tunproxy on ${o.tun}?`;
      log(
        `${label} recovered from ${p.path} (written by pid ${f.header.pid}, which ${how}): ${r.restored} flows; ` +
          `${r.expired} ran out meanwhile, ${r.torn} torn and ${r.damaged} damaged records skipped, ${r.clashes} duplicates` +
          (r.unresolvedNames > 0 ? `, ${r.unresolvedNames} of services no longer in the rule set` : ''),
      );
      return true;
    } else log(`${label} pinned in ${p.path}`);
    return false;
  };
  const restoreConntrack = () => {
    const names = dp.tables !== null ? serviceNames(dp.tables) : [];
    // the IPv4 lines read as they always did; the IPv6 ones say so
    const recovered4 = finishPinned(pinned, 'connection table', names);
    const recovered6 = finishPinned(pinned6, 'IPv6 connection table', names);
    // the IPv6 path is made on the first IPv6 packet: make it now when flows came back, so they are listed and saved
    if (recovered6 && pinned6 !== null && pinned6.conntrack.size > 0) dp.pipeline.ipv6();
    if (store === null) return;
    // a pinned table is as new as a snapshot saved on SIGTERM, or newer: it supersedes its family's part
    if (recovered4 && recovered6) {
      if (existsSync(store.conntrackPath)) {
        store.consumeConntrack();
        log(`the connection table saved in ${store.conntrackPath} is superseded by the pinned one: removed`);
      }
      return;
    }
    const saved = store.loadConntrack();
    if (saved.status === 'none') return;
    if (saved.status === 'damaged') return log(`the saved connection table ${saved.path} is damaged (${saved.reason}): moved to ${saved.movedTo}; starting with an empty table`);
    if (saved.status === 'foreign') return log(`the saved connection table ${saved.path} is not restored: ${saved.reason}`);
    const r = restoreConntrackParts(saved, recovered4 ? null : dp.pipeline.conntrack, recovered6 ? null : () => dp.pipeline.ipv6().conntrack);
    const parts: string[] = [];
    if (r.ipv4 !== null) parts.push(`${r.ipv4} IPv4`);
    else if (recovered4) parts.push('the IPv4 part superseded by the pinned table');
    if (r.ipv6 !== null) parts.push(`${r.ipv6} IPv6`);
    else if (recovered6) parts.push('the IPv6 part superseded by the pinned table');
    const expired = saved.expired + saved.expired6;
    const when = `saved ${(saved.elapsedMs / 1000).toFixed(1)} s ago; ${expired} ran out meanwhile`;
    if (r.damaged.length > 0) {
      // never trusted: the whole file is kept aside for a look; the parts that were whole are in the table
      const moved = store.setAsideConntrack();
      for (const d of r.damaged) {
        log(`the saved connection table ${saved.path} is damaged (${d.family} part: ${d.reason}): moved to ${moved}; no ${d.family} flow restored from it`);
      }
      if (r.ipv4 !== null || r.ipv6 !== null) log(`connection table restored from ${saved.path}: ${(r.ipv4 ?? 0) + (r.ipv6 ?? 0)} flows (${parts.join(', ')}; ${when})`);
      return;
    }
    store.consumeConntrack();
    log(`connection table restored from ${saved.path}: ${(r.ipv4 ?? 0) + (r.ipv6 ?? 0)} flows (${parts.join(', ')}; ${when})`);
  };
  const attach = () => {
    restoreConntrack();
    // before the packets move: the views the next snapshot takes, and one full collection of what the start made
    const spare = cw.host.prepareSpare();
    const gcMs = collectBeforeStart();
    log(`before the packets move: ${spare} spare views made, the heap collected${gcMs === null ? ' (not possible here: skipped)' : ` in ${gcMs.toFixed(1)} ms`}`);
    const l = dp.attach(tun, { batch });
    log(`attached to ${tun.name}, batch ${batch}, ${Math.round(l.bufferBytes / 1024)} KiB of packet buffer; ready`);
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

  // the control worker reads and reloads the file, and says what came of it
  process.on('SIGHUP', () => cw.post({ ctl: 'reload' }));
  let listing = false;
  process.on('SIGUSR1', () => {
    status();
    if (listing) return;
    listing = true;
    void listConntrackToStderr(dp).finally(() => {
      listing = false;
    });
  });
  await new Promise<void>((resolve) => {
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
          const items6 = dp.pipeline.conntrackV6?.snapshot() ?? [];
          store.saveConntrack(items, Date.now(), items6);
          log(`connection table saved to ${store.conntrackPath}: ${items.length + items6.length} flows (${items.length} IPv4, ${items6.length} IPv6)`);
        } catch (e) {
          log(`cannot save the connection table to ${store.conntrackPath}: ${(e as Error).message}`);
        }
      }
      pinned?.close();
      pinned6?.close();
      // the control worker flushes the rule set to the state directory and closes the API
      await cw.stop();
      log(`final: ${dp.statusLine()} tun rx=${ts.rxPackets} tx=${ts.txPackets} tx_again=${ts.txAgain} tx_errors=${ts.txErrors}`);
      resolve();
    };
    process.once('SIGINT', () => void stop('SIGINT'));
    process.once('SIGTERM', () => void stop('SIGTERM'));
    // only now, with every signal handler in place, say "ready": a supervisor that signals as soon as
    // it reads it must not find Node's defaults (SIGUSR1 would start the inspector, SIGTERM would kill)
    if (dp.tables !== null) attach();
    else {
      // the first rule set through the API starts the packets moving
      cw.once('installed', () => setImmediate(() => {
        if (!stopping && dp.loop === null) attach();
      }));
    }
  });
}
