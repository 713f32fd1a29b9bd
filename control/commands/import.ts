/**
 * `tunproxy import iptables FILE [--ip6tables FILE6]` / `tunproxy import kubernetes FILE`: a
 * node's iptables-save (or ip6tables-save, or both: a dual-stack node), or
 * `kubectl get services,endpointslices -A -o json`,
 * → the rule set as JSON on stdout; each rule or object not understood on
 * stderr with its line. Works without a running tunproxy; `--apply` sends the
 * result to one. The rule set is validated before it is printed.
 * Exit 0: everything kube-proxy wrote was understood; 3: some of it was not;
 * 1: the output is not a valid rule set (nothing on stdout), or an error.
 * Other software's rules (docker, flannel, ...) are "left to the kernel" and
 * do not make an import partial.
 */
import type { Command } from 'commander';
import type { KubernetesImportOptions } from '../kubernetes.ts';
import type { ImportResult } from '../iptables/importer.ts';
import type { RuleSet } from '../types.ts';
import type { ApiClient } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Progress, addClientOptions, clientFrom, err, ifMatchHeader, outputOption, print, readInput, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';
import { canonicalIPv6 } from '../../dataplane/addr6.ts';
// the importers are loaded by the command that runs them (the command line starts faster without them)

interface ImportFlags extends ClientFlags {
  nodePortRange?: string;
  verbose?: boolean;
  nodeAddress?: string[];
  nodeName?: string;
  clusterCidr?: string;
  apply?: boolean;
  allowPartial?: boolean;
  ifMatch?: string;
  quiet?: boolean;
  progress?: boolean;
  output: string;
  ip6tables?: string;
}

const LARGE_INPUT = 1 << 20;

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** --node-address A[,B] (repeatable; IPv4 or IPv6) */
export function collectNodeAddress(v: string, prev: string[] = []): string[] {
  for (const a of v.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
    if (a.includes(':')) {
      const c = canonicalIPv6(a);
      if (c === null) throw new Error(`--node-address ${a}: not an IPv6 address`);
      prev.push(c);
      continue;
    }
    if (!IPV4.test(a)) throw new Error(`--node-address ${a}: not an IPv4 address`);
    prev.push(a);
  }
  return prev;
}

/** --node-port-range LOW-HIGH */
export function nodePortRangeOption(v: string): string {
  const m = /^(\d+)-(\d+)$/.exec(v);
  if (!m || Number(m[1]) < 1 || Number(m[2]) > 65535 || Number(m[1]) > Number(m[2])) throw new Error(`--node-port-range ${v}: expected LOW-HIGH within 1-65535, like 30000-32767`);
  return v;
}

/** What an iptables import says on stderr: not understood (always), errors (always), then limits, other software, warnings, summary. */
export function reportIptablesImport(label: string, r: ImportResult, o: { quiet?: boolean; verbose?: boolean; label6?: string }): void {
  // a dual-stack import tags each line with its dump
  const at = (n: { family?: 4 | 6 }) => (n.family === 6 && o.label6 !== undefined ? o.label6 : label);
  for (const n of r.notUnderstood) err(`${at(n)}:${n.line}: not understood: ${n.reason}\n    ${n.text}`);
  for (const e of r.errors) err(`${label}: invalid rule set: ${e.path}: ${e.message}`);
  if (o.quiet) return;
  for (const l of r.limits) err(`${at(l)}${l.line ? ':' + l.line : ''}: limit: ${l.reason}`);
  if (r.leftToKernel) err(`${label}: ${r.leftToKernel}`);
  if (o.verbose) for (const n of r.otherSoftware) err(`${at(n)}:${n.line}: left to the kernel: ${n.reason}\n    ${n.text}`);
  for (const w of r.warnings) err(`${label}: warning: ${w}`);
  const nu = r.notUnderstood.length;
  const ns = r.ruleSet.services.length;
  err(`${label}: ${ns} service${ns === 1 ? '' : 's'}; ${nu} kube-proxy rule${nu === 1 ? '' : 's'} not understood; ${r.otherSoftware.length} of other software left to the kernel; ${r.limits.length} limit${r.limits.length === 1 ? '' : 's'}; ${r.warnings.length} warning${r.warnings.length === 1 ? '' : 's'}${r.errors.length > 0 ? `; NOT a valid rule set (${r.errors.length} error${r.errors.length === 1 ? '' : 's'})` : ''}`);
}

function addImportOptions(cmd: Command): Command {
  cmd
    .argument('<file>', 'the input ("-": stdin)')
    .option('--node-address <address>', "the node's address (repeat or comma-separate; default: the addresses the dump's NodePort rules name, or with --apply the running tunproxy's)", collectNodeAddress)
    .option('--node-port-range <range>', 'the NodePort range LOW-HIGH (default: 30000-32767, widened to the NodePorts of an iptables dump outside it)', nodePortRangeOption)
    .option('--node-name <name>', "the node's name")
    .option('--cluster-cidr <cidr>', "the pod CIDR (kube-proxy's --cluster-cidr)")
    .option('--apply', 'send the result to the running tunproxy (PUT /v1/ruleset)')
    .option('--allow-partial', 'with --apply: apply even when some input was not understood')
    .option('--if-match <generation>', 'with --apply: only if this generation is still in force')
    .option('--progress', 'show progress on stderr (default: for inputs over 1 MiB on a terminal)')
    .option('-q, --quiet', 'no progress, no summary, no warnings on stderr (what was not understood and errors are still printed)')
    .option('-v, --verbose', "also list other software's rules, each with its line")
    .addOption(outputOption(['json', 'yaml'], 'json'));
  return addClientOptions(cmd);
}

/** The node of the rule set in force in the running tunproxy (for --apply without --node-address). */
async function runningNode(client: ApiClient): Promise<RuleSet['node'] | null> {
  const r = await client.request<RuleSet>('GET', '/v1/ruleset');
  if (r.status === 404) return null;
  if (r.status >= 400) {
    const { ApiRequestError } = await import('../client.ts');
    throw new ApiRequestError(r.status, r.body, r.text);
  }
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
    const { ApiRequestError } = await import('../client.ts');
    if (!(e instanceof ApiRequestError)) throw e;
    reportApiError(e);
    return EXIT_ERROR;
  }
}

export function registerImport(program: Command): void {
  const imp = program.command('import').description('read kube-proxy\'s iptables rules or the Kubernetes objects into a rule set (JSON on stdout)');
  const help = `
Exit status: 0 everything kube-proxy wrote was understood; 3 some of its
rules/objects were not (each on stderr as FILE:LINE: reason); 1 the output is
not a valid rule set (each error on stderr, nothing on stdout), or an error.`;

  const ipt = imp
    .command('iptables')
    .description("a node's iptables-save output (kube-proxy iptables mode), its ip6tables-save output, or both → rule set");
  addImportOptions(ipt)
    .option('--ip6tables <file6>', "the same node's ip6tables-save output: a dual-stack node (services in both dumps are merged by name into dual-stack ones)")
    .addHelpText('after', `${help}
FILE may be ip6tables-save output (told from its header or addresses): an
IPv6 node. With --ip6tables FILE6 beside an iptables-save FILE, services of
one name in both become dual-stack (clusterIPs IPv4 then IPv6); each line on
stderr names the dump it is in.
Other software's rules (docker, flannel, libvirt, kind, ...) are summed up as
"left to the kernel: N rules in chains ..." (-v lists them) and do not make an
import partial. Where tunproxy cannot serve what the kernel serves (physdev or
addrtype conditions, shadowed services, NodePorts on 127.0.0.1), it serves
less, never more, and says so as "limit:" lines.
The node's addresses come from --node-address, else from the dump's
"-d ADDRESS -j KUBE-NODEPORTS" rules; with neither, the import exits 1.

Example:
  iptables-save > node.save; tunproxy import iptables node.save --node-address 172.16.1.35 > rs.json
  tunproxy import iptables node.save --node-address 172.16.1.35 | tunproxy trace --rules - tcp 10.0.0.2:40000 172.30.0.41:80
  ip6tables-save > node6.save; tunproxy import iptables node.save --ip6tables node6.save --node-address 172.16.1.35,fd00:50::2 > rs.json`)
    .action(async (file: string, f: ImportFlags) => {
      const label = file === '-' ? 'stdin' : file;
      const text = readInput(file);
      const label6 = f.ip6tables === undefined ? undefined : f.ip6tables === '-' ? 'stdin' : f.ip6tables;
      const text6 = f.ip6tables === undefined ? undefined : readInput(f.ip6tables);
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
      const { importIptables, IptablesImportError } = await import('../iptables/importer.ts');
      const { importIptablesDualStack } = await import('../iptables/import-dual.ts');
      let r;
      try {
        const opts = { ...(nodeAddresses ? { nodeAddresses } : {}), ...(f.nodePortRange ? { nodePortRange: f.nodePortRange } : {}) };
        r = text6 === undefined ? importIptables(text, opts) : importIptablesDualStack(text, text6, opts);
      } catch (e) {
        if (e instanceof IptablesImportError) {
          err(`${label6 !== undefined && e.message.startsWith('ip6tables dump:') ? label6 : label}${e.line ? ':' + e.line : ''}: ${e.message}`);
          process.exitCode = EXIT_ERROR;
          return;
        }
        throw e;
      }
      progress.note(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      if (running || nodeName !== undefined || f.clusterCidr !== undefined) {
        if (running) r.ruleSet.node = { ...running, ...r.ruleSet.node };
        if (nodeName !== undefined) r.ruleSet.node.name = nodeName;
        if (f.clusterCidr !== undefined) r.ruleSet.node.clusterCIDR = f.clusterCidr;
        const { validateRuleSet } = await import('../validate.ts');
        const v = validateRuleSet(r.ruleSet);
        r.errors = v.ok ? [] : v.errors.map((e) => (e.path === 'node.addresses' && r!.ruleSet.node.addresses.length === 0 ? { ...e, message: `${e.message}: give them with --node-address ADDRESS` } : e));
      }
      reportIptablesImport(label, r, { ...f, ...(label6 !== undefined ? { label6 } : {}) });
      if (r.errors.length > 0) {
        process.exitCode = EXIT_ERROR;
        return;
      }
      print(r.ruleSet, f.output);
      if (client) process.exitCode = await applyResult(f, client, r.ruleSet, r.notUnderstood.length, label);
      else process.exitCode = r.notUnderstood.length > 0 ? EXIT_PARTIAL : EXIT_OK;
    });

  const kube = imp
    .command('kubernetes')
    .alias('k8s')
    .description('kubectl get services,endpointslices -A -o json (or -o yaml) → rule set');
  addImportOptions(kube)
    .addHelpText('after', `${help}
Services kube-proxy writes no rules for (ExternalName, headless) are noted
on stderr as skipped; they do not change the exit status. Dual-stack services
(spec.clusterIPs, ipFamilies) keep both families, with the endpoints of their
IPv4 and IPv6 EndpointSlices; --node-address takes addresses of both.

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
      if (f.nodePortRange !== undefined) o.nodePortRange = f.nodePortRange;
      o.onProgress = (done, total) => progress.update(done, total, done === total);
      o.progressEvery = 500;
      const { importKubernetes, KubernetesImportError } = await import('../kubernetes.ts');
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
