/**
 * Build the lab for a rule set:
 *   tsx scripts/netns-up.ts --prefix tp-lab --rules rules.json [--tun tun0] [--client-pod] [--multi-queue]
 * Prints the lab (namespaces, addresses, TUN, pod-server PIDs) as JSON. Remove it with netns-down.ts.
 */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import type { RuleSet } from '../control/types.ts';
import { labUp } from './lab.ts';

const program = new Command()
  .name('netns-up')
  .description('build the tunproxy lab (client, node with a TUN, one namespace per pod) from a rule set')
  .requiredOption('--prefix <prefix>', 'namespace name prefix, starting with tp-')
  .requiredOption('--rules <file>', 'rule set JSON (apiVersion tunproxy.dev/v1)')
  .option('--tun <name>', 'TUN device in the node namespace', 'tun0')
  .option('--client-pod [address]', 'also build a client pod inside the cluster CIDR')
  .option('--multi-queue', 'create the TUN with multi_queue')
  .option('--service-cidr <cidr...>', 'route these CIDRs into the TUN instead of each service address')
  .option('--no-servers', 'do not start the pod servers')
  .option('--state-dir <dir>', 'state file and logs', '/run/tunproxy-lab')
  .parse();

const o = program.opts();
try {
  let ruleSet: RuleSet;
  try {
    ruleSet = JSON.parse(readFileSync(o.rules, 'utf8')) as RuleSet;
  } catch (e) {
    throw new Error(`cannot read the rule set ${o.rules}: ${(e as Error).message}`);
  }
  const lab = await labUp({
    prefix: o.prefix,
    ruleSet,
    tunName: o.tun,
    clientPod: o.clientPod,
    multiQueue: !!o.multiQueue,
    serviceCIDRs: o.serviceCidr,
    podServers: o.servers,
    stateDir: o.stateDir,
  });
  const { exec: _e, run: _r, spawn: _s, podFor: _p, down: _d, ...shown } = lab;
  process.stdout.write(JSON.stringify(shown, null, 2) + '\n');
} catch (e) {
  process.stderr.write(`netns-up: ${(e as Error).message}\n`);
  process.exit(1);
}
