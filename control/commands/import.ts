/**
 * `tunproxy import iptables FILE` / `tunproxy import kubernetes FILE`: a
 * node's iptables-save, or `kubectl get services,endpointslices -A -o json`,
 * → the rule set as JSON on stdout; each rule or object not understood on
 * stderr with its line. Works without a running tunproxy; `--apply` sends the
 * result to one. Exit 0: everything understood; 3: some was not; 1: error.
 */
import type { Command } from 'commander';
import { importIptables, IptablesImportError } from '../iptables/importer.ts';
import { importKubernetes, KubernetesImportError } from '../kubernetes.ts';
import type { KubernetesImportOptions } from '../kubernetes.ts';
import type { RuleSet } from '../types.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';
import { ApiRequestError } from '../client.ts';
import type { ApiClient } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Progress, addClientOptions, clientFrom, err, ifMatchHeader, outputOption, print, readInput, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';

interface ImportFlags extends ClientFlags {
  nodeAddress?: string[];
  nodeName?: string;
  clusterCidr?: string;
  apply?: boolean;
  allowPartial?: boolean;
  ifMatch?: string;
  quiet?: boolean;
  progress?: boolean;
  output: string;
}

const LARGE_INPUT = 1 << 20;

function collect(v: string, prev: string[] = []): string[] {
  for (const a of v.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
    if (parseIPv4(a) < 0) throw new Error(`--node-address ${a}: not an IPv4 address`);
    prev.push(a);
  }
  return prev;
}

function addImportOptions(cmd: Command): Command {
  cmd
    .argument('<file>', 'the input ("-": stdin)')
    .option('--node-address <address>', "the node's address (repeat or comma-separate; default with --apply: the running tunproxy's)", collect)
    .option('--node-name <name>', "the node's name")
    .option('--cluster-cidr <cidr>', "the pod CIDR (kube-proxy's --cluster-cidr)")
    .option('--apply', 'send the result to the running tunproxy (PUT /v1/ruleset)')
    .option('--allow-partial', 'with --apply: apply even when some input was not understood')
    .option('--if-match <generation>', 'with --apply: only if this generation is still in force')
    .option('--progress', 'show progress on stderr (default: for inputs over 1 MiB on a terminal)')
    .option('-q, --quiet', 'no progress, no summary, no warnings on stderr (what was not understood is still printed)')
    .addOption(outputOption(['json', 'yaml'], 'json'));
  return addClientOptions(cmd);
}

/** The node of the rule set in force in the running tunproxy (for --apply without --node-address). */
async function runningNode(client: ApiClient): Promise<RuleSet['node'] | null> {
  const r = await client.request<RuleSet>('GET', '/v1/ruleset');
  if (r.status === 404) return null;
  if (r.status >= 400) throw new ApiRequestError(r.status, r.body, r.text);
  return r.body.node;
}

async function applyResult(f: ImportFlags, client: ApiClient, rs: RuleSet, notUnderstood: number, label: string): Promise<number> {
  if (notUnderstood > 0 && !f.allowPartial) {
    err(`${label}: not applied: ${notUnderstood} not understood (--allow-partial applies what was understood)`);
    return EXIT_PARTIAL;
  }
  try {
    const r = await client.call<{ generation: number; services: number; compileMs: number }>('PUT', '/v1/ruleset', { body: rs, headers: ifMatchHeader(f.ifMatch) });
    err(`${label}: applied: generation ${r.body.generation}, ${r.body.services} services, in force after ${r.body.compileMs.toFixed(1)} ms`);
    return notUnderstood > 0 ? EXIT_PARTIAL : EXIT_OK;
  } catch (e) {
    if (!(e instanceof ApiRequestError)) throw e;
    reportApiError(e);
    return EXIT_ERROR;
  }
}

export function registerImport(program: Command): void {
  const imp = program.command('import').description('read kube-proxy\'s iptables rules or the Kubernetes objects into a rule set (JSON on stdout)');
  const help = `
Exit status: 0 everything understood, 3 some rules/objects not understood
(each on stderr as FILE:LINE: reason), 1 error.`;

  const ipt = imp
    .command('iptables')
    .description("a node's iptables-save output (kube-proxy iptables mode) → rule set");
  addImportOptions(ipt)
    .addHelpText('after', `${help}

Example:
  iptables-save > node.save; tunproxy import iptables node.save --node-address 172.16.1.35 > rs.json`)
    .action(async (file: string, f: ImportFlags) => {
      const label = file === '-' ? 'stdin' : file;
      const text = readInput(file);
      const progress = new Progress(!f.quiet && (f.progress === true || (process.stderr.isTTY === true && text.length > LARGE_INPUT)), `import ${label}`);
      let nodeAddresses = f.nodeAddress;
      let nodeName = f.nodeName;
      const client = f.apply ? clientFrom(f) : null;
      // with --apply: what the dump does not say about the node comes from the running tunproxy
      const running = client ? await runningNode(client) : null;
      if (running) {
        nodeAddresses ??= running.addresses;
        nodeName ??= running.name;
      }
      progress.note(`parsing ${(text.length / 1048576).toFixed(1)} MiB of iptables rules`);
      const t0 = performance.now();
      let r;
      try {
        r = importIptables(text, nodeAddresses ? { nodeAddresses } : {});
      } catch (e) {
        if (e instanceof IptablesImportError) {
          err(`${label}${e.line ? ':' + e.line : ''}: ${e.message}`);
          process.exitCode = EXIT_ERROR;
          return;
        }
        throw e;
      }
      progress.note(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      if (running) r.ruleSet.node = { ...running, ...r.ruleSet.node };
      if (nodeName !== undefined) r.ruleSet.node.name = nodeName;
      if (f.clusterCidr !== undefined) r.ruleSet.node.clusterCIDR = f.clusterCidr;
      print(r.ruleSet, f.output);
      for (const n of r.notUnderstood) err(`${label}:${n.line}: not understood: ${n.reason}\n    ${n.text}`);
      if (!f.quiet) {
        for (const w of r.warnings) err(`${label}: warning: ${w}`);
        err(`${label}: ${r.ruleSet.services.length} services; ${r.notUnderstood.length} rule${r.notUnderstood.length === 1 ? '' : 's'} not understood; ${r.warnings.length} warning${r.warnings.length === 1 ? '' : 's'}`);
      }
      if (client) process.exitCode = await applyResult(f, client, r.ruleSet, r.notUnderstood.length, label);
      else process.exitCode = r.notUnderstood.length > 0 ? EXIT_PARTIAL : EXIT_OK;
    });

  const kube = imp
    .command('kubernetes')
    .alias('k8s')
    .description('kubectl get services,endpointslices -A -o json (or -o yaml) → rule set');
  addImportOptions(kube)
    .addHelpText('after', `${help}
Services kube-proxy writes no rules for (ExternalName, headless, IPv6) are
noted on stderr as skipped; they do not change the exit status.

Example:
  kubectl get services,endpointslices -A -o json > cluster.json
  tunproxy import kubernetes cluster.json --node-name node-a --node-address 172.16.1.35 --cluster-cidr 10.64.0.0/16`)
    .action(async (file: string, f: ImportFlags) => {
      const label = file === '-' ? 'stdin' : file;
      const text = readInput(file);
      const progress = new Progress(!f.quiet && (f.progress === true || (process.stderr.isTTY === true && text.length > LARGE_INPUT)), `import ${label}`);
      const o: KubernetesImportOptions = {};
      const client = f.apply ? clientFrom(f) : null;
      const node = client ? await runningNode(client) : null;
      const name = f.nodeName ?? node?.name;
      if (name !== undefined) o.nodeName = name;
      const addrs = f.nodeAddress ?? node?.addresses;
      if (addrs !== undefined) o.nodeAddresses = addrs;
      const cidr = f.clusterCidr ?? node?.clusterCIDR;
      if (cidr !== undefined) o.clusterCIDR = cidr;
      if (node?.masqueradeAddress !== undefined) o.masqueradeAddress = node.masqueradeAddress;
      if (node?.nodePortRange !== undefined) o.nodePortRange = node.nodePortRange;
      o.onProgress = (done, total) => progress.update(done, total, done === total);
      o.progressEvery = 500;
      let r;
      try {
        r = importKubernetes(text, o);
      } catch (e) {
        if (e instanceof KubernetesImportError) {
          err(`${label}${e.line ? ':' + e.line : ''}: ${e.message}`);
          process.exitCode = EXIT_ERROR;
          return;
        }
        throw e;
      }
      progress.end();
      if (node) r.ruleSet.node = { ...node, ...r.ruleSet.node };
      print(r.ruleSet, f.output);
      for (const n of r.notUnderstood) err(`${label}:${n.line}: not understood: ${n.object}: ${n.reason}`);
      if (!f.quiet) {
        for (const n of r.skipped) err(`${label}:${n.line}: skipped ${n.object}: ${n.reason}`);
        for (const w of r.warnings) err(`${label}: warning: ${w}`);
        err(`${label}: ${r.objects} objects, ${r.ruleSet.services.length} services; ${r.notUnderstood.length} not understood, ${r.skipped.length} skipped; ${r.warnings.length} warning${r.warnings.length === 1 ? '' : 's'}`);
      }
      if (client) process.exitCode = await applyResult(f, client, r.ruleSet, r.notUnderstood.length, label);
      else process.exitCode = r.notUnderstood.length > 0 ? EXIT_PARTIAL : EXIT_OK;
    });
}
