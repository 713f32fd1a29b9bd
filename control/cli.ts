/**
 * `tunproxy` — the command line (commander). Each command lives in
 * control/commands/ and registers itself here. Exit codes scripts can rely
 * on: 0 success, 1 error, 2 usage error, 3 partial (some input not understood).
 *
 * Only the command being run is loaded (`tunproxy trace …` does not load
 * `run`'s or `import`'s modules); `tunproxy --help`, an unknown command or no
 * command at all load every command, for the full usage.
 */
import { Command, CommanderError } from 'commander';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_PARTIAL = 3;

type Register = (program: Command) => void;

/** Each command's module, in the order `--help` lists them. */
const COMMANDS: Array<[string[], () => Promise<Register>]> = [
  [['run'], async () => (await import('./commands/run.ts')).registerRun],
  [['tun-holder'], async () => (await import('./commands/tun-holder.ts')).registerTunHolder],
  [['apply'], async () => (await import('./commands/apply.ts')).registerApply],
  [['get'], async () => (await import('./commands/get.ts')).registerGet],
  [['import'], async () => (await import('./commands/import.ts')).registerImport],
  [['validate'], async () => (await import('./commands/validate.ts')).registerValidate],
  [['conntrack'], async () => (await import('./commands/conntrack.ts')).registerConntrack],
  [['trace'], async () => (await import('./commands/trace.ts')).registerTrace],
  [['stats'], async () => (await import('./commands/stats.ts')).registerStats],
];

/** The program with the commands `argv` needs: the one it names, else all of them. */
export async function buildCli(argv: string[] = process.argv): Promise<Command> {
  const program = new Command('tunproxy')
    .description('A Kubernetes-Service dataplane on a TUN device: hash-indexed service tables, conntrack, DNAT/SNAT.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const name = argv[2];
  const one = COMMANDS.find(([names]) => names.includes(name));
  const wanted = one ? [one] : COMMANDS;
  const registers = await Promise.all(wanted.map(([, load]) => load()));
  for (const register of registers) register(program);
  return program;
}

async function main(): Promise<void> {
  // `tunproxy ... | head` closing the pipe is not an error
  for (const stream of [process.stdout, process.stderr]) stream.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0); throw e; });
  try {
    const program = await buildCli(process.argv);
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
