/**
 * `tunproxy trace PROTO SRC:PORT DST:PORT`: what the running tunproxy would
 * do with the first packet of that flow, beside kube-proxy's iptables rules
 * for the same rule set (POST /v1/trace).
 */
import type { Command } from 'commander';
import type { Verdict } from '../../dataplane/verdict.ts';
import { ApiRequestError } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_USAGE, addClientOptions, clientFrom, err, outputOption, print, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';

interface TraceFlags extends ClientFlags {
  output: string;
  inInterface?: string;
  local?: boolean;
  kubeProxy: boolean;
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

export function traceText(a: TraceAnswer): string {
  const t = a.tunproxy;
  const out: string[] = [`${a.packet.protocol} ${a.packet.source} -> ${a.packet.destination}   (rule set generation ${a.generation})`, ''];
  const head = verdictLines(t.verdict, t.masquerade.address);
  out.push(`tunproxy:   ${head[0]}${t.table ? `   [${t.table} table${t.chain ? `, ${t.chain}` : ''}]` : ''}`, ...head.slice(1));
  for (const why of t.explanation) out.push(`  - ${why}`);
  if (a.kubeProxy) {
    const k = a.kubeProxy;
    const kh = verdictLines(k.verdict, t.masquerade.address);
    out.push('', `kube-proxy: ${kh[0]}   [iptables, ${k.rules} rules]`, ...kh.slice(1));
    out.push(`  - one walk as the kernel makes it: ${k.rulesVisited} rules visited${k.walk.endpoint ? `, drew ${k.walk.endpoint}` : ''}`);
    if (k.builtForThisTrace) out.push(`  - rules written and compiled for this generation in ${k.buildMs.toFixed(0)} ms (kept for the next traces)`);
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
    .addOption(outputOption(['text', 'json', 'yaml'], 'text'));
  addClientOptions(cmd)
    .addHelpText('after', `
Example:
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
      const client = clientFrom(f);
      const body: Record<string, unknown> = { protocol: proto, source, destination };
      if (f.inInterface !== undefined) body.inInterface = f.inInterface;
      if (f.local) body.local = true;
      if (!f.kubeProxy) body.kubeProxy = false;
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
