/**
 * `tunproxy run`: attach to a TUN device, load the rule set, move packets.
 * SIGHUP reloads the rules file (a rejected file leaves the running rules in
 * force and says why); SIGINT/SIGTERM stop cleanly; a one-line status is
 * printed every --status-interval seconds and on SIGUSR1.
 */
import type { Command } from 'commander';
import { Dataplane } from '../dataplane.ts';
import { readRuleSetFile } from '../load.ts';
import { RuleSetError } from '../validate.ts';
import { TunDevice } from '../../dataplane/tun/index.ts';

export interface RunOptions {
  tun: string;
  rules: string;
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
    .requiredOption('-r, --rules <file>', 'rule set file, reloaded on SIGHUP')
    .option('--batch <n>', 'packets per read/write system call', '64')
    .option('--status-interval <seconds>', 'print a status line this often (0: only on SIGUSR1)', '10')
    .option('--conntrack-max <n>', 'connection table size, like nf_conntrack_max', '262144')
    .option('--multi-queue', 'open the TUN with IFF_MULTI_QUEUE (the device must have been created multi_queue)')
    .addHelpText('after', `
Signals: SIGHUP reloads --rules (a rejected file keeps the rules in force),
SIGUSR1 prints the status and the connection table, SIGINT/SIGTERM stop.

Example (inside the node namespace of the lab):
  tunproxy run --tun tun0 --rules examples/demo-ruleset.json`)
    .action((o: RunOptions) => run(o));
}

export async function run(o: RunOptions): Promise<void> {
  const batch = Number(o.batch);
  const interval = Number(o.statusInterval);
  const conntrackMax = Number(o.conntrackMax);
  if (!Number.isInteger(batch) || batch < 1 || batch > 1024) throw new Error(`--batch: ${o.batch} must be an integer 1-1024`);
  if (!Number.isFinite(interval) || interval < 0) throw new Error(`--status-interval: ${o.statusInterval} must be a number of seconds >= 0`);
  if (!Number.isInteger(conntrackMax) || conntrackMax < 1) throw new Error(`--conntrack-max: ${o.conntrackMax} must be a positive integer`);

  const dp = new Dataplane({ conntrackMax });
  try {
    const r = dp.holder.apply(readRuleSetFile(o.rules));
    log(`rule set ${o.rules}: generation ${r.generation}, ${r.services} services, ${r.servicePorts} service ports, compiled in ${r.compileMs.toFixed(1)} ms`);
  } catch (e) {
    if (e instanceof RuleSetError) throw new Error(`${o.rules}: ${e.message}`);
    throw e;
  }
  const tun = TunDevice.open(o.tun, { multiQueue: !!o.multiQueue });
  dp.attach(tun, { batch });
  log(`attached to ${tun.name}, batch ${batch}; ready`);

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
    const stop = (sig: string) => {
      log(`${sig}: stopping`);
      if (timer) clearInterval(timer);
      clearInterval(dropTimer);
      dp.detach();
      const ts = tun.stats();
      tun.close();
      log(`final: ${dp.statusLine()} tun rx=${ts.rxPackets} tx=${ts.txPackets} tx_again=${ts.txAgain} tx_errors=${ts.txErrors}`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
