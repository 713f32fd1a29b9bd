/**
 * Remove a lab: stop its pod servers and delete every namespace named `${prefix}-...`.
 *   tsx scripts/netns-down.ts --prefix tp-lab
 */
import { Command } from 'commander';
import { labDown } from './lab.ts';

const program = new Command()
  .name('netns-down')
  .description('remove the tunproxy lab with this prefix (namespaces, pod servers, state file)')
  .requiredOption('--prefix <prefix>', 'namespace name prefix, starting with tp-')
  .option('--state-dir <dir>', 'state file and logs', '/run/tunproxy-lab')
  .parse();

const o = program.opts();
try {
  const r = await labDown(o.prefix, { stateDir: o.stateDir });
  process.stdout.write(
    `netns-down: ${o.prefix}: deleted ${r.namespaces.length} namespace(s)${r.namespaces.length ? ` (${r.namespaces.join(', ')})` : ''}, stopped ${r.stopped.length} pod server(s)\n`,
  );
  if (r.others.length)
    process.stderr.write(`netns-down: processes not started by the lab were still inside its namespaces and were left alone: PIDs ${r.others.join(', ')}\n`);
} catch (e) {
  process.stderr.write(`netns-down: ${(e as Error).message}\n`);
  process.exit(1);
}
