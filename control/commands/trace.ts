/**
 * `tunproxy trace PROTO SRC:PORT DST:PORT`: what tunproxy would do with the
 * first packet of that flow, beside kube-proxy's iptables rules.
 *
 * - Live (default): the running tunproxy answers (POST /v1/trace), with its
 *   connection table and affinity state.
 * - Offline, `--rules FILE|-`: a rule set; kube-proxy's side is the rules
 *   kube-proxy would write for it. No root, device or process.
 * - Offline, `--iptables FILE|-`: a node's iptables-save dump; tunproxy's side
 *   is the rule set it imports to, kube-proxy's side the dump itself walked
 *   as the kernel walks it.
 *
 * The answer is control/trace.ts's, the same as the API's.
 */
import type { Command } from 'commander';
import type { Verdict } from '../../dataplane/verdict.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_USAGE, addClientOptions, clientFrom, err, outputOption, print, readInput, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';
import { collectNodeAddress, nodePortRangeOption, reportIptablesImport } from './import.ts';

interface TraceFlags extends ClientFlags {
  output: string;
  inInterface?: string;
  local?: boolean;
  kubeProxy: boolean;
  rules?: string;
  iptables?: string;
  nodeAddress?: string[];
  nodePortRange?: string;
}

interface TraceAnswer {
  generation: number;
  packet: { protocol: string; source: string; destination: string };
  tunproxy: {
    verdict: Verdict;
    table: string | null;
    chain: string | null;
    affinity: { seconds: number; hit: string | null } | null;
    masquerade: { beforeEndpointChoice: boolean; address: string };
    conntrack: { direction: string; flow: { endpoint: string; state: string } } | null;
    explanation: string[];
  };
  kubeProxy: {
    verdict: Verdict;
    walk: { kind: string; endpoint: string | null; masquerade: boolean; rulesVisited: number };
    rulesVisited: number;
    rules: number;
    buildMs: number;
    builtForThisTrace: boolean;
  } | null;
  agree: boolean | null;
  differences: string[] | null;
}

function verdictLines(v: Verdict, masqAddr: string): string[] {
  switch (v.kind) {
    case 'dnat':
      return [
        `DNAT ${v.service}${v.affinitySeconds ? ` (ClientIP affinity ${v.affinitySeconds} s)` : ''}`,
        ...v.candidates.map((c) => `    ${c.endpoint.padEnd(22)} ${(c.probability * 100).toFixed(1).padStart(5)}%${c.masquerade ? `  masquerade to ${masqAddr}` : ''}`),
      ];
    case 'reject':
      return [`REJECT ${v.service} (no endpoints: ICMP port unreachable)`];
    case 'drop':
      return [`DROP ${v.service} (${v.reason})`];
    default:
      return ['no service: the packet passes unchanged'];
  }
}

export function traceText(a: TraceAnswer, origin?: string): string {
  const t = a.tunproxy;
  const out: string[] = [`${a.packet.protocol} ${a.packet.source} -> ${a.packet.destination}   (${origin ?? `rule set generation ${a.generation}`})`, ''];
  const head = verdictLines(t.verdict, t.masquerade.address);
  // a packet tunproxy does not serve, though kube-proxy's iptables mode may (localhost NodePorts): not "passes unchanged"
  const notServed = t.verdict.kind === 'nomatch' ? t.explanation.find((w) => w.includes('not served:')) : undefined;
  if (notServed) head[0] = notServed.slice(notServed.indexOf('not served:'));
  out.push(`tunproxy:   ${head[0]}${t.table ? `   [${t.table} table${t.chain ? `, ${t.chain}` : ''}]` : ''}`, ...head.slice(1));
  for (const why of t.explanation) out.push(`  - ${why}`);
  if (a.kubeProxy) {
    const k = a.kubeProxy;
    const kh = verdictLines(k.verdict, t.masquerade.address);
    out.push('', `kube-proxy: ${kh[0]}   [iptables, ${k.rules} rules]`, ...kh.slice(1));
    out.push(`  - one walk as the kernel makes it: ${k.rulesVisited} rules visited${k.walk.endpoint ? `, drew ${k.walk.endpoint}` : ''}`);
    if (k.builtForThisTrace && origin === undefined) out.push(`  - rules written and compiled for this generation in ${k.buildMs.toFixed(0)} ms (kept for the next traces)`);
    out.push('', a.agree ? 'agree: yes' : `agree: NO\n${(a.differences ?? []).map((d) => `  - ${d}`).join('\n')}`);
  }
  return out.join('\n') + '\n';
}

export function registerTrace(program: Command): void {
  const cmd = program
    .command('trace')
    .description("what tunproxy would do with a flow's first packet, and why, beside kube-proxy's iptables chains (POST /v1/trace)")
    .argument('<protocol>', 'tcp, udp or sctp')
    .argument('<source>', 'SRC:PORT')
    .argument('<destination>', 'DST:PORT')
    .option('-i, --in-interface <name>', 'the input interface, for rules with -i')
    .option('--local', 'the packet comes from a process on the node (its source is a node address)')
    .option('--no-kube-proxy', "leave out kube-proxy's side (writing and compiling its rules takes a while for large rule sets)")
    .option('--rules <file>', 'offline: trace in this rule set (JSON or YAML, "-": stdin), not in the running tunproxy')
    .option('--iptables <file>', "offline: trace in a node's iptables-save dump (\"-\": stdin): tunproxy's side is the rule set it imports to, kube-proxy's side the dump itself")
    .option('--node-address <address>', "with --iptables: the node's address (repeat or comma-separate; default: the addresses the dump's NodePort rules name)", collectNodeAddress)
    .option('--node-port-range <range>', 'with --iptables: the NodePort range LOW-HIGH', nodePortRangeOption)
    .addOption(outputOption(['text', 'json', 'yaml'], 'text'));
  addClientOptions(cmd)
    .addHelpText('after', `
Offline (no root, no device, no running tunproxy):
  tunproxy trace --rules rules.json tcp 10.0.0.2:40000 172.30.0.41:80
  tunproxy trace --iptables node.save --node-address 192.168.0.2 tcp 203.0.113.9:40000 192.168.0.2:3001
  tunproxy import iptables node.save --node-address 192.168.0.2 | tunproxy trace --rules - tcp 10.0.0.2:40000 172.30.0.41:80

Example (live):
  tunproxy trace tcp 192.168.77.2:40000 10.96.0.10:80`)
    .action(async (protocol: string, source: string, destination: string, f: TraceFlags) => {
      const proto = protocol.toUpperCase();
      if (!['TCP', 'UDP', 'SCTP'].includes(proto)) {
        err(`tunproxy trace: protocol ${protocol}: expected tcp, udp or sctp`);
        process.exitCode = EXIT_USAGE;
        return;
      }
      for (const [what, v] of [['source', source], ['destination', destination]]) {
        if (!/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/.test(v)) {
          err(`tunproxy trace: ${what} ${v}: expected ADDRESS:PORT, like 10.96.0.10:80`);
          process.exitCode = EXIT_USAGE;
          return;
        }
      }
      const body: Record<string, unknown> = { protocol: proto, source, destination };
      if (f.inInterface !== undefined) body.inInterface = f.inInterface;
      if (f.local) body.local = true;
      if (!f.kubeProxy) body.kubeProxy = false;
      if (f.rules !== undefined || f.iptables !== undefined) {
        process.exitCode = await offline(f, body as { protocol: string; source: string; destination: string });
        return;
      }
      const client = clientFrom(f);
      const { ApiRequestError } = await import('../client.ts');
      try {
        const r = await client.call<TraceAnswer>('POST', '/v1/trace', { body });
        if (f.output === 'text') process.stdout.write(traceText(r.body));
        else print(r.body, f.output);
        process.exitCode = EXIT_OK;
      } catch (e) {
        if (!(e instanceof ApiRequestError)) throw e;
        reportApiError(e);
        process.exitCode = EXIT_ERROR;
      }
    });
}

/** The offline trace: the same answer as the API's, from a file. */
async function offline(f: TraceFlags, request: { protocol: string; source: string; destination: string; inInterface?: string; local?: boolean; kubeProxy?: boolean }): Promise<number> {
  if (f.rules !== undefined && f.iptables !== undefined) {
    err('tunproxy trace: --rules and --iptables: give one of them');
    return EXIT_USAGE;
  }
  const [{ traceAnswer, cachedLinear, TraceRequestError }, { compile }, { writeIptables }] = await Promise.all([
    import('../trace.ts'),
    import('../compile.ts'),
    import('../iptables/writer.ts'),
  ]);
  const file = (f.rules ?? f.iptables)!;
  const label = file === '-' ? 'stdin' : file;
  const text = readInput(file);
  let rs;
  let linearText: string;
  if (f.rules !== undefined) {
    const [{ parseRuleSetText }, { validateRuleSet }] = await Promise.all([import('../load.ts'), import('../validate.ts')]);
    let doc: unknown;
    try {
      if (text.trim() === '') throw new Error(`${label}: empty: no rule set`);
      doc = parseRuleSetText(text, label);
    } catch (e) {
      err((e as Error).message);
      return EXIT_ERROR;
    }
    const v = validateRuleSet(doc);
    if (!v.ok) {
      for (const e of v.errors) err(`${label}: ${e.path}: ${e.message}`);
      err(`${label}: not a valid rule set (${v.errors.length} error${v.errors.length === 1 ? '' : 's'}); tunproxy validate ${file === '-' ? '-' : file} lists them too`);
      return EXIT_ERROR;
    }
    rs = v.ruleSet;
    linearText = '';
  } else {
    const { importIptables, IptablesImportError } = await import('../iptables/importer.ts');
    let r;
    try {
      r = importIptables(text, { ...(f.nodeAddress ? { nodeAddresses: f.nodeAddress } : {}), ...(f.nodePortRange ? { nodePortRange: f.nodePortRange } : {}) });
    } catch (e) {
      if (!(e instanceof IptablesImportError)) throw e;
      err(`${label}${e.line ? ':' + e.line : ''}: ${e.message}`);
      return EXIT_ERROR;
    }
    if (r.errors.length > 0 || r.notUnderstood.length > 0) reportIptablesImport(label, r, { quiet: true });
    if (r.errors.length > 0) return EXIT_ERROR;
    rs = r.ruleSet;
    linearText = text;
  }
  const inInterface = request.inInterface ?? '';
  let answer;
  try {
    answer = traceAnswer({
      rs,
      tables: compile(rs),
      generation: 0,
      request,
      live: null,
      // a dump is walked as the kernel walks it: 127.0.0.1 is a local address there (localhost NodePorts)
      linear: () => ({ cached: cachedLinear(f.rules !== undefined ? writeIptables(rs) : linearText, f.rules !== undefined ? rs.node.addresses : [...rs.node.addresses, '127.0.0.1'], inInterface), built: false }),
      nowMs: 0,
    });
  } catch (e) {
    if (!(e instanceof TraceRequestError)) throw e;
    err(`tunproxy trace: ${e.message}`);
    return EXIT_USAGE;
  }
  if (f.output === 'text') process.stdout.write(traceText(answer as unknown as TraceAnswer, f.rules !== undefined ? `offline, rule set ${label}` : `offline, iptables dump ${label}`));
  else print(answer, f.output);
  return EXIT_OK;
}
