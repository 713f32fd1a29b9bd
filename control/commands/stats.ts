/**
 * `tunproxy stats`: the running tunproxy's counters (GET /v1/stats).
 */
import type { Command } from 'commander';
import { ApiRequestError } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, addClientOptions, clientFrom, outputOption, print, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';
import type { ThreadHeap } from '../worker/packet-side.ts';

interface StatsFlags extends ClientFlags {
  output: string;
}

interface Stats {
  generation: number;
  ruleSet: { services: number; servicePorts: number; inForceSince: string | null; applies: number; rejected: number };
  uptimeSeconds: number;
  counters: { packets: Record<string, number>; bytes: Record<string, number>; drops: Record<string, number>; events: Record<string, number>; malformed: Record<string, number> };
  conntrack: Record<string, number>;
  conntrack6?: Record<string, number> | null;
  affinity: Record<string, number>;
  loop: Record<string, unknown> | null;
  state: { dir: string; savedGeneration: number; journalRecords?: number; lastError: string | null } | null;
  memory?: { rssBytes: number; packetThread: ThreadHeap; controlThread: ThreadHeap | null; malloc?: { inUseBytes: number; freeBytes: number; mmapBytes: number; trims: number; releasedBytes: number } | null };
}

const mib = (b: number): string => `${(b / 1048576).toFixed(1)} MiB`;
/** One thread's heap in a few words: its objects' bytes of those V8 holds for it, and the memory its objects keep outside it. */
const heapWords = (h: ThreadHeap): string => `heap ${mib(h.usedBytes)} of ${mib(h.totalBytes)}, external ${mib(h.externalBytes)}`;

/** The memory line: the process's resident set, then each thread's heap (one heap when the packets move in the API's thread). */
function memoryLine(m: NonNullable<Stats['memory']>): string {
  const c = m.malloc;
  const cHeap = c ? `; C heap ${mib(c.inUseBytes + c.mmapBytes)} in use, ${mib(c.freeBytes)} free in its arenas${c.trims > 0 ? ` (${c.trims} trim${c.trims === 1 ? '' : 's'} gave back ${mib(c.releasedBytes)})` : ''}` : '';
  return `memory       ${mib(m.rssBytes)} resident; ${m.controlThread === null ? heapWords(m.packetThread) : `packet thread ${heapWords(m.packetThread)}; control worker ${heapWords(m.controlThread)}`}${cHeap}`;
}

/** One connection table's line: `conntrack ` (IPv4) or `conntrack6`. */
function ctLine(label: string, c: Record<string, number>): string {
  return `${label}   ${c.entries}/${c.max} entries, ${c.inserts} inserted, ${c.evictions} evicted, ${c.expired} expired, ${c.collisions} collisions, ${c.clashes} clashes, ${c.full ?? 0} refused (full)`;
}

export function statsText(s: Stats): string {
  const nz = (o: Record<string, number>) => Object.entries(o).filter(([, v]) => v !== 0).map(([k, v]) => `${k}=${v}`).join(' ') || '(none)';
  const lines = [
    `rule set     generation ${s.generation}, ${s.ruleSet.services} services, ${s.ruleSet.servicePorts} service ports${s.ruleSet.inForceSince ? `, in force since ${s.ruleSet.inForceSince}` : ''}`,
    `             ${s.ruleSet.applies} applied, ${s.ruleSet.rejected} rejected through the API`,
    `packets      ${Object.entries(s.counters.packets).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    `bytes        ${Object.entries(s.counters.bytes).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    `drops        ${nz(s.counters.drops)}`,
    `events       ${nz(s.counters.events)}`,
    ctLine('conntrack ', s.conntrack),
    ...(s.conntrack6 ? [ctLine('conntrack6', s.conntrack6)] : []),
    `affinity     ${s.affinity.entries} entries, ${s.affinity.hits} hits`,
    `loop         ${s.loop ? Object.entries(s.loop).map(([k, v]) => `${k}=${v}`).join(' ') : 'no TUN device attached'}`,
    `state        ${s.state ? `${s.state.dir}, generation ${s.state.savedGeneration} saved${s.state.journalRecords ? ` (${s.state.journalRecords} change${s.state.journalRecords === 1 ? '' : 's'} in the journal)` : ''}${s.state.lastError ? `, last save failed: ${s.state.lastError}` : ''}` : 'no --state-dir'}`,
    ...(s.memory ? [memoryLine(s.memory)] : []),
    `uptime       ${s.uptimeSeconds.toFixed(0)} s`,
  ];
  if (Object.keys(s.counters.malformed).length > 0) lines.splice(5, 0, `malformed    ${nz(s.counters.malformed)}`);
  return lines.join('\n') + '\n';
}

export function registerStats(program: Command): void {
  const cmd = program.command('stats').description("the running tunproxy's counters: packets and bytes by verdict, drops by reason, conntrack, rule set, memory").addOption(outputOption(['text', 'json', 'yaml'], 'text'));
  addClientOptions(cmd).action(async (f: StatsFlags) => {
    const client = clientFrom(f);
    try {
      const r = await client.call<Stats>('GET', '/v1/stats');
      if (f.output === 'text') process.stdout.write(statsText(r.body));
      else print(r.body, f.output);
      process.exitCode = EXIT_OK;
    } catch (e) {
      if (!(e instanceof ApiRequestError)) throw e;
      reportApiError(e);
      process.exitCode = EXIT_ERROR;
    }
  });
}
