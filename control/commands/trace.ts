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
 *   as the kernel walks it. `--ip6tables FILE6` adds the node's ip6tables-save
 *   dump (a dual-stack node, imported as `import iptables --ip6tables` does);
 *   FILE may itself be an ip6tables-save dump (an IPv6 node).
 *
 * IPv6 packets: `tunproxy trace tcp '[2001:db8::9]:40000' '[fd00:30::41]:80'`,
 * walked through kube-proxy's ip6tables rules (the dump's, or those written
 * for the rule set's IPv6 half) and looked up in the IPv6 tables.
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
  ip6tables?: string;
  nodeAddress?: string[];
  nodePortRange?: string;
}

interface TraceAnswer {
  generation: number;
  packet: { protocol: string; family?: string; source: string; destination: string };
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
    rulesOf?: string;
    rules: number;
    buildMs: number;
    builtForThisTrace: boolean;
  } | null;
  agree: boolean | null;
  differences: string[] | null;
}

function verdictLines(v: Verdict, masqAddr: string, icmp = 'ICMP'): string[] {
  switch (v.kind) {
    case 'dnat':
      return [
        `DNAT ${v.service}${v.affinitySeconds ? ` (ClientIP affinity ${v.affinitySeconds} s)` : ''}`,
        ...v.candidates.map((c) => `    ${c.endpoint.padEnd(Math.max(22, ...v.candidates.map((x) => x.endpoint.length + 1)))} ${(c.probability * 100).toFixed(1).padStart(5)}%${c.masquerade ? `  masquerade to ${masqAddr}` : ''}`),
      ];
    case 'reject':
      return [`REJECT ${v.service} (no endpoints: ${icmp} port unreachable)`];
    case 'drop':
      return [`DROP ${v.service} (${v.reason})`];
    default:
      return ['no service: the packet passes unchanged'];
  }
}

export function traceText(a: TraceAnswer, origin?: string): string {
  const t = a.tunproxy;
  const out: string[] = [`${a.packet.protocol} ${a.packet.source} -> ${a.packet.destination}   (${origin ?? `rule set generation ${a.generation}`})`, ''];
  const icmp = a.packet.family === 'ipv6' ? 'ICMPv6' : 'ICMP';
  const head = verdictLines(t.verdict, t.masquerade.address, icmp);
  // a packet tunproxy does not serve, though kube-proxy's iptables mode may (localhost NodePorts): not "passes unchanged"
  const notServed = t.verdict.kind === 'nomatch' ? t.explanation.find((w) => w.includes('not served:')) : undefined;
  if (notServed) head[0] = notServed.slice(notServed.indexOf('not served:'));
  out.push(`tunproxy:   ${head[0]}${t.table ? `   [${t.table} table${t.chain ? `, ${t.chain}` : ''}]` : ''}`, ...head.slice(1));
  for (const why of t.explanation) out.push(`  - ${why}`);
  if (a.kubeProxy) {
    const k = a.kubeProxy;
    const kh = verdictLines(k.verdict, t.masquerade.address, icmp);
    out.push('', `kube-proxy: ${kh[0]}   [${k.rulesOf ?? 'iptables'}, ${k.rules} rules]`, ...kh.slice(1));
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
    .argument('<source>', 'SRC:PORT (IPv6: [SRC]:PORT)')
    .argument('<destination>', 'DST:PORT (IPv6: [DST]:PORT)')
    .option('-i, --in-interface <name>', 'the input interface, for rules with -i')
    .option('--local', 'the packet comes from a process on the node (its source is a node address)')
    .option('--no-kube-proxy', "leave out kube-proxy's side (writing and compiling its rules takes a while for large rule sets)")
    .option('--rules <file>', 'offline: trace in this rule set (JSON or YAML, "-": stdin), not in the running tunproxy')
    .option('--iptables <file>', "offline: trace in a node's iptables-save dump (\"-\": stdin; or its ip6tables-save dump, told from the text): tunproxy's side is the rule set it imports to, kube-proxy's side the dump itself")
    .option('--ip6tables <file6>', "offline, with --iptables: the same node's ip6tables-save dump (a dual-stack node); IPv6 packets are walked through it")
    .option('--node-address <address>', "with --iptables: the node's address (IPv4 or IPv6) (repeat or comma-separate; default: the addresses the dump's NodePort rules name)", collectNodeAddress)
    .option('--node-port-range <range>', 'with --iptables: the NodePort range LOW-HIGH', nodePortRangeOption)
    .addOption(outputOption(['text', 'json', 'yaml'], 'text'));
  addClientOptions(cmd)
    .addHelpText('after', `
Offline (no root, no device, no running tunproxy):
  tunproxy trace --rules rules.json tcp 10.0.0.2:40000 172.30.0.41:80
  tunproxy trace --iptables node.save --node-address 192.168.0.2 tcp 203.0.113.9:40000 192.168.0.2:3001
  tunproxy import iptables node.save --node-address 192.168.0.2 | tunproxy trace --rules - tcp 10.0.0.2:40000 172.30.0.41:80
  tunproxy trace --iptables node.save --ip6tables node6.save --node-address 192.168.0.2,2001:db8:1::2 tcp '[2001:db8::9]:40000' '[fd00:30::41]:80'

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
        if (!/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}$/.test(v)) {
          err(`tunproxy trace: ${what} ${v}: expected ADDRESS:PORT, like 10.96.0.10:80, or [ADDRESS]:PORT for IPv6, like [fd00:30::41]:80`);
          process.exitCode = EXIT_USAGE;
          return;
        }
      }
      if (source.startsWith('[') !== destination.startsWith('[')) {
        err(`tunproxy trace: source ${source} and destination ${destination}: a packet's addresses are of one family (IPv6 ones in brackets)`);
        process.exitCode = EXIT_USAGE;
        return;
      }
      const body: Record<string, unknown> = { protocol: proto, source, destination };
      if (f.inInterface !== undefined) body.inInterface = f.inInterface;
      if (f.local) body.local = true;
      if (!f.kubeProxy) body.kubeProxy = false;
      if (f.rules !== undefined || f.iptables !== undefined || f.ip6tables !== undefined) {
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
  if (f.rules !== undefined && (f.iptables !== undefined || f.ip6tables !== undefined)) {
    err(`tunproxy trace: --rules and --${f.iptables !== undefined ? 'iptables' : 'ip6tables'}: give one of them`);
    return EXIT_USAGE;
  }
  if (f.ip6tables !== undefined && f.iptables === undefined) {
    err('tunproxy trace: --ip6tables FILE6 goes with --iptables FILE (the same node\'s iptables-save); an IPv6 node\'s ip6tables-save alone is given as --iptables FILE6');
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
  const six = request.destination.startsWith('[');
  let rs;
  // the dumps walked as the kernel walks them, by family (null: no rules of that family given)
  const dumps: { 4: { text: string; label: string } | null; 6: { text: string; label: string } | null } = { 4: null, 6: null };
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
  } else {
    const [{ importIptables, IptablesImportError }, { importIptablesDualStack }, { detectFamily }] = await Promise.all([
      import('../iptables/importer.ts'),
      import('../iptables/import-dual.ts'),
      import('../iptables/parser.ts'),
    ]);
    const label6 = f.ip6tables === undefined ? undefined : f.ip6tables === '-' ? 'stdin' : f.ip6tables;
    const text6 = f.ip6tables === undefined ? undefined : readInput(f.ip6tables);
    if (text6 !== undefined) {
      dumps[4] = { text, label };
      dumps[6] = { text: text6, label: label6! };
    } else dumps[detectFamily(text)] = { text, label };
    // an IPv6 packet needs the node's ip6tables rules, an IPv4 one its iptables rules: said before anything is imported
    const mine = dumps[six ? 6 : 4];
    if (mine === null) {
      const other = dumps[six ? 4 : 6]!;
      err(six
        ? `tunproxy trace: an IPv6 packet (${request.destination}) is walked through the node's ip6tables rules, and ${other.label} is iptables-save output (IPv4 rules only): give the node's ip6tables-save dump with --ip6tables FILE6`
        : `tunproxy trace: an IPv4 packet (${request.destination}) is walked through the node's iptables rules, and ${other.label} is ip6tables-save output (IPv6 rules only): give the node's iptables-save dump with --iptables FILE and its ip6tables-save with --ip6tables FILE6`);
      return EXIT_USAGE;
    }
    const opts = { ...(f.nodeAddress ? { nodeAddresses: f.nodeAddress } : {}), ...(f.nodePortRange ? { nodePortRange: f.nodePortRange } : {}) };
    let r;
    try {
      r = text6 === undefined ? importIptables(text, opts) : importIptablesDualStack(text, text6, opts);
    } catch (e) {
      if (!(e instanceof IptablesImportError)) throw e;
      err(`${label6 !== undefined && e.message.startsWith('ip6tables dump:') ? label6 : label}${e.line ? ':' + e.line : ''}: ${e.message}`);
      return EXIT_ERROR;
    }
    if (r.errors.length > 0 || r.notUnderstood.length > 0) reportIptablesImport(label, r, { quiet: true, ...(label6 !== undefined ? { label6 } : {}) });
    if (r.errors.length > 0) return EXIT_ERROR;
    rs = r.ruleSet;
  }
  const inInterface = request.inInterface ?? '';
  const linear = (family: 4 | 6) => {
    if (f.rules !== undefined) return { cached: cachedLinear(writeIptables(rs, { family }), rs.node.addresses, inInterface, family), built: false };
    const d = dumps[family]!;
    // a dump is walked as the kernel walks it: the loopback address is a local address there (localhost NodePorts)
    return { cached: cachedLinear(d.text, [...rs.node.addresses, family === 6 ? '::1' : '127.0.0.1'], inInterface, family), built: false };
  };
  let answer;
  try {
    answer = traceAnswer({ rs, tables: compile(rs), generation: 0, request, live: null, linear, nowMs: 0 });
  } catch (e) {
    if (!(e instanceof TraceRequestError)) throw e;
    err(`tunproxy trace: ${e.message}`);
    return EXIT_USAGE;
  }
  const origin = f.rules !== undefined ? `offline, rule set ${label}` : `offline, ${six ? 'ip6tables' : 'iptables'} dump ${dumps[six ? 6 : 4]!.label}`;
  if (f.output === 'text') process.stdout.write(traceText(answer as unknown as TraceAnswer, origin));
  else print(answer, f.output);
  return EXIT_OK;
}
