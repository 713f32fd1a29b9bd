/**
 * `tunproxy` — the command line (commander). Each command lives in
 * control/commands/ and registers itself here. Exit codes scripts can rely
 * on: 0 success, 1 error, 2 usage error, 3 partial (some input not understood).
 */
import { Command, CommanderError } from 'commander';
import { registerRun } from './commands/run.ts';
import { registerApply } from './commands/apply.ts';
import { registerGet } from './commands/get.ts';
import { registerImport } from './commands/import.ts';
import { registerConntrack } from './commands/conntrack.ts';
import { registerTrace } from './commands/trace.ts';
import { registerStats } from './commands/stats.ts';
import { registerValidate } from './commands/validate.ts';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_PARTIAL = 3;

export function buildCli(): Command {
  const program = new Command('tunproxy')
    .description('A Kubernetes-Service dataplane on a TUN device: hash-indexed service tables, conntrack, DNAT/SNAT.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerRun(program);
  registerApply(program);
  registerGet(program);
  registerImport(program);
  registerValidate(program);
  registerConntrack(program);
  registerTrace(program);
  registerStats(program);
  return program;
}

async function main(): Promise<void> {
  // `tunproxy ... | head` closing the pipe is not an error
  for (const stream of [process.stdout, process.stderr]) stream.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0); throw e; });
  const program = buildCli();
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help' ? EXIT_OK : EXIT_USAGE;
      return;
    }
    console.error(`tunproxy: ${(e as Error).message}`);
    process.exitCode = EXIT_ERROR;
  }
}

await main();
