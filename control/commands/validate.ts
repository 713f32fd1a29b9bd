/**
 * `tunproxy validate FILE`: is this a rule set tunproxy accepts? FILE is a
 * rule set (JSON or YAML) or a node's iptables-save dump (imported first, as
 * `tunproxy import iptables` does). Offline: no root, no device, no running
 * tunproxy. Exit 0: valid; 1: not, with every error on stderr.
 */
import type { Command } from 'commander';
import { EXIT_ERROR, EXIT_OK, err, readInput } from './common.ts';
import { collectNodeAddress, nodePortRangeOption, reportIptablesImport } from './import.ts';

interface ValidateFlags {
  nodeAddress?: string[];
  nodePortRange?: string;
  quiet?: boolean;
}

/** iptables-save output or kube-proxy's restore input, rather than JSON or YAML */
export function looksLikeIptables(text: string): boolean {
  for (const raw of text.split('\n', 200)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    return /^(\*[a-z]+|:[A-Za-z0-9_-]+ |(\[\d+:\d+\] )?-A )/.test(line);
  }
  return false;
}

export function registerValidate(program: Command): void {
  program
    .command('validate')
    .description("check a rule set, or the rule set a node's iptables-save dump imports to, without a running tunproxy (every error on stderr)")
    .argument('<file>', 'a rule set (JSON or YAML) or an iptables-save dump ("-": stdin)')
    .option('--node-address <address>', "for a dump: the node's address (repeat or comma-separate; default: the addresses the dump's NodePort rules name)", collectNodeAddress)
    .option('--node-port-range <range>', 'for a dump: the NodePort range LOW-HIGH', nodePortRangeOption)
    .option('-q, --quiet', 'only errors on stderr')
    .addHelpText('after', `
Exit status: 0 valid, 1 not (each error on stderr as FILE: PATH: reason).

Examples:
  tunproxy validate rules.json
  iptables-save | tunproxy validate - --node-address 172.16.1.35`)
    .action(async (file: string, f: ValidateFlags) => {
      const label = file === '-' ? 'stdin' : file;
      const text = readInput(file);
      if (looksLikeIptables(text)) {
        const { importIptables, IptablesImportError } = await import('../iptables/importer.ts');
        let r;
        try {
          r = importIptables(text, { ...(f.nodeAddress ? { nodeAddresses: f.nodeAddress } : {}), ...(f.nodePortRange ? { nodePortRange: f.nodePortRange } : {}) });
        } catch (e) {
          if (!(e instanceof IptablesImportError)) throw e;
          err(`${label}${e.line ? ':' + e.line : ''}: ${e.message}`);
          process.exitCode = EXIT_ERROR;
          return;
        }
        for (const p of r.parseErrors) err(`${label}:${p.line}: does not parse: ${p.reason}`);
        reportIptablesImport(label, r, { quiet: f.quiet });
        const bad = r.errors.length + r.parseErrors.length;
        if (bad === 0) process.stdout.write(`${label}: valid: an iptables dump that imports to a valid rule set of ${r.ruleSet.services.length} services${r.notUnderstood.length > 0 ? ` (${r.notUnderstood.length} kube-proxy rules not understood)` : ''}\n`);
        process.exitCode = bad === 0 ? EXIT_OK : EXIT_ERROR;
        return;
      }
      const [{ parseRuleSetText }, { validateRuleSet }] = await Promise.all([import('../load.ts'), import('../validate.ts')]);
      let doc: unknown;
      try {
        doc = parseRuleSetText(text, label);
      } catch (e) {
        err((e as Error).message);
        process.exitCode = EXIT_ERROR;
        return;
      }
      const v = validateRuleSet(doc);
      if (!v.ok) {
        for (const e of v.errors) err(`${label}: ${e.path}: ${e.message}`);
        err(`${label}: not a valid rule set (${v.errors.length} error${v.errors.length === 1 ? '' : 's'})`);
        process.exitCode = EXIT_ERROR;
        return;
      }
      const rs = v.ruleSet;
      const ports = rs.services.reduce((n, s) => n + s.ports.length, 0);
      const eps = rs.services.reduce((n, s) => n + (s.endpoints?.length ?? 0), 0);
      process.stdout.write(`${label}: valid: ${rs.services.length} services, ${ports} ports, ${eps} endpoints\n`);
      process.exitCode = EXIT_OK;
    });
}
