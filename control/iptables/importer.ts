/**
 * kube-proxy's iptables (iptables-save output or its own restore input) →
 * a rule set.
 *
 * Starts from what names services — the `"ns/name:port cluster IP"`,
 * `external IP`, `loadbalancer IP` rules of nat KUBE-SERVICES, the rules of
 * KUBE-NODEPORTS, the REJECT/DROP rules of the filter table — and follows the
 * jumps: KUBE-SVC-/KUBE-SVL- (endpoints in order, ClientIP affinity),
 * KUBE-EXT- (external traffic policy), KUBE-FW- (source ranges), KUBE-SEP-
 * (the DNAT target: the endpoint). Reads the current layout (v1.24+:
 * KUBE-EXT-, KUBE-SVL-, KUBE-PROXY-FIREWALL) and the older one (KUBE-XLB-,
 * KUBE-FW- ending in KUBE-MARK-DROP, NodePort masquerade rules in
 * KUBE-SVC-/KUBE-NODEPORTS), either argument order, with or without counters.
 *
 * Nothing is dropped silently: every rule it does not turn into the rule set
 * is listed in `notUnderstood` with its line and why (chains of other
 * software, unknown matches, chains the dump references but does not define),
 * and `warnings` says what could not be told from the text.
 *
 * Split along its seams: import-rules.ts (records and one-rule helpers),
 * import-chains.ts (ChainReader: reading the chains), import-build.ts
 * (RuleSetBuilder: the rule set), this file (running them).
 */
import { parseIptablesSave, detectFamily } from './parser.ts';
import type { NotUnderstood, ImportResult, ImportOptions } from './import-rules.ts';
import { IptablesImportError } from './import-rules.ts';
import { RuleSetBuilder } from './import-build.ts';
export { IptablesImportError, PLACEHOLDER_REMOTE_ENDPOINT, PLACEHOLDER_REMOTE_ENDPOINT6, LOCALHOST_NODEPORTS_LIMIT, softwareOf } from './import-rules.ts';
export type { NotUnderstood, ImportResult, ImportOptions } from './import-rules.ts';

class Importer extends RuleSetBuilder {
  protected readonly parseErrors: NotUnderstood[] = [];

  run(): ImportResult {
    for (const e of this.parsed.errors) {
      const text = e.line > 0 ? this.lineText(e.line) : '';
      this.notUnderstood.push({ line: e.line, text, reason: e.message });
      this.parseErrors.push({ line: e.line, text, reason: e.message });
    }
    this.infrastructure();
    this.nodeAddressesFromDump();
    this.natServices();
    this.natNodePorts();
    this.filterRules();
    for (const rec of this.ports.values()) this.settleSourceRanges(rec);
    this.leftovers();
    this.otherMasquerade();
    this.notUnderstood.sort((a, b) => a.line - b.line);
    this.otherSoftware.sort((a, b) => a.line - b.line);
    const ruleSet = this.build();
    const errors = this.validate(ruleSet);
    this.limits.sort((a, b) => a.line - b.line);
    return {
      ruleSet,
      notUnderstood: this.notUnderstood,
      otherSoftware: this.otherSoftware,
      leftToKernel: this.leftToKernel(),
      limits: this.limits,
      warnings: this.warnings,
      nodeAddressesFrom: this.nodeAddressesFrom,
      errors,
      parseErrors: this.parseErrors,
    };
  }

  protected lines: string[] | null = null;
  protected text = '';
  setText(text: string): void {
    this.text = text;
  }
  protected lineText(line: number): string {
    if (!this.lines) this.lines = this.text.split('\n');
    return (this.lines[line - 1] ?? '').trim();
  }
}


/**
 * Import kube-proxy's iptables rules (iptables-save output, with or without
 * counters, or kube-proxy's restore input), or its IPv6 proxier's
 * (ip6tables-save output: `family: 6`, else told from the text). Throws
 * IptablesImportError for IPv6 in an iptables dump or text without
 * kube-proxy's chains.
 */
export function importIptables(text: string, opts: ImportOptions = {}): ImportResult {
  const family = opts.family ?? detectFamily(text);
  const parsed = parseIptablesSave(text, { family });
  if (family === 4 && parsed.ipv6) {
    const line = parsed.errors.find((e) => /IPv6/.test(e.message))?.line ?? 0;
    throw new IptablesImportError(
      `IPv6 in an iptables dump (${line ? `line ${line}` : 'ip6tables-save output'}): import an ip6tables-save dump on its own (family 6) or beside the iptables-save one (--ip6tables), not mixed into it`,
      line,
    );
  }
  const nat = parsed.tables.get('nat');
  const filter = parsed.tables.get('filter');
  if (!nat?.chains.has('KUBE-SERVICES') && !filter?.chains.has('KUBE-SERVICES')) {
    const first = parsed.errors[0];
    throw new IptablesImportError(
      `no KUBE-SERVICES chain in a nat or filter table: not kube-proxy's ${family === 6 ? 'ip6tables' : 'iptables'} rules (iptables mode)${first ? `; first parse error, line ${first.line}: ${first.message}` : ''}`,
      first?.line ?? 0,
    );
  }
  const imp = new Importer(parsed, opts);
  imp.setText(text);
  return imp.run();
}
