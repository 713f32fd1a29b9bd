/**
 * `tunproxy apply -f FILE`: put a rule set (JSON or YAML) in force in the
 * running tunproxy. Exit 0 when it is in force, 1 when it was rejected (every
 * error on stderr with its path) or the API could not be reached.
 */
import type { Command } from 'commander';
import { parseRuleSetText } from '../load.ts';
import { validateRuleSet } from '../validate.ts';
import { ApiRequestError } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, addClientOptions, clientFrom, err, ifMatchHeader, readInput, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';

interface ApplyFlags extends ClientFlags {
  file: string;
  ifMatch?: string;
  dryRun?: boolean;
}

export function registerApply(program: Command): void {
  const cmd = program
    .command('apply')
    .description('put a rule set (JSON or YAML) in force in the running tunproxy (PUT /v1/ruleset)')
    .requiredOption('-f, --file <file>', 'the rule set ("-": stdin)')
    .option('--if-match <generation>', 'apply only if this generation is still in force (safe read-modify-write)')
    .option('--dry-run', 'only validate the file here; send nothing');
  addClientOptions(cmd)
    .addHelpText('after', `
Exit status: 0 in force, 1 rejected (each error on stderr with its path) or no API.

Examples:
  tunproxy apply -f rules.yaml
  tunproxy get ruleset > rs.json; edit rs.json; tunproxy apply -f rs.json --if-match 12`)
    .action(async (f: ApplyFlags) => {
      process.exitCode = await apply(f);
    });
}

async function apply(f: ApplyFlags): Promise<number> {
  const doc = parseRuleSetText(readInput(f.file), f.file === '-' ? 'stdin' : f.file);
  if (f.dryRun) {
    const v = validateRuleSet(doc);
    if (v.ok) {
      err(`${f.file}: valid: ${v.ruleSet.services.length} services`);
      return EXIT_OK;
    }
    err(`${f.file}: rejected (${v.errors.length} error${v.errors.length === 1 ? '' : 's'}):`);
    for (const e of v.errors) err(`  ${e.path}: ${e.message}`);
    return EXIT_ERROR;
  }
  const client = clientFrom(f);
  try {
    const r = await client.call<{ generation: number; compileMs: number; services: number; servicePorts: number; persisted: boolean; persistError?: string }>('PUT', '/v1/ruleset', { body: doc, headers: ifMatchHeader(f.ifMatch) });
    const b = r.body;
    err(`applied ${f.file}: generation ${b.generation}, ${b.services} services, ${b.servicePorts} service ports, in force after ${b.compileMs.toFixed(1)} ms${b.persisted ? '' : b.persistError ? ` (not saved: ${b.persistError})` : ''}`);
    return EXIT_OK;
  } catch (e) {
    if (e instanceof ApiRequestError) {
      reportApiError(e);
      return EXIT_ERROR;
    }
    throw e;
  }
}
