/**
 * npm run bench:one-change [-- --services 100000 --changes 6 --out-dir DIR]
 *
 * One-service changes in a real `tunproxy run` (control worker, packet
 * thread, state directory), where `bench:sync` measures the holder in one
 * process: a fresh `tunproxy run` in a network namespace of its own
 * (tp-chg<pid>, deleted at the end, also on failure) gets a full PUT of
 * --services services (bench:e2e's rule set: UDP, 3 endpoints), then, 1 s
 * later, --changes one-service additions (`PUT /v1/services/{ns}/{name}` of a
 * new service: new VIP keys) and as many replacements of an existing
 * service's endpoints (the same verb on a service in force: the same keys),
 * 300 ms apart. Each is timed from the request to the answer, which comes
 * once the packet thread has the new tables in force and the change is
 * synced to the state directory's journal; beside it, the memory each
 * thread touched for the first time (minor page faults, MB): on a VM a page
 * touched for the first time is dear (`npm run bench:put-cold` prints the
 * machine's figure).
 *
 * bench/results/one-change.{json,md} (--out-dir: in DIR instead, for a look
 * or a test): {machine, services, putMs, adds: [{ms, freshMB,
 * packetThreadFreshMB}], replaces: [...]}.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { argNum, fmt, machine, median, writeResults } from './common.ts';
import { benchRuleSet } from './e2e.ts';
import { TunproxyProc, unixHttp } from './e2e-run.ts';
import { addNetns, deleteNetns, netnsUnavailableReason } from '../scripts/ns.ts';
import type { Service } from '../control/types.ts';

const n = argNum('services', 100000);
const changes = Math.max(1, argNum('changes', 6));
const outAt = process.argv.indexOf('--out-dir');
const outDir = outAt >= 0 ? process.argv[outAt + 1] : undefined;
if (outAt >= 0 && (outDir === undefined || outDir.startsWith('--'))) throw new Error('--out-dir needs a directory');

interface Change {
  ms: number;
  /** every thread of the process */
  freshMB: number;
  packetThreadFreshMB: number;
}

const PAGES_PER_MB = (1 << 20) / 4096;
/** minor page faults per thread of a process (field 10 of /proc/PID/task/TID/stat) */
function faultsByThread(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      out.set(tid, Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[7]));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

async function timed(tp: TunproxyProc, socket: string, svc: Service, want: number): Promise<Change> {
  const before = faultsByThread(tp.pid);
  const a = await unixHttp(socket, 'PUT', `/v1/services/${svc.namespace}/${svc.name}`, JSON.stringify(svc));
  const after = faultsByThread(tp.pid);
  if (a.status !== want) throw new Error(`PUT /v1/services/${svc.namespace}/${svc.name}: ${a.status} (wanted ${want}) ${a.body.slice(0, 300)}`);
  let all = 0;
  for (const [tid, f] of after) all += f - (before.get(tid) ?? 0);
  // the packet thread is the process's main thread (its tid is the pid)
  const packet = (after.get(String(tp.pid)) ?? 0) - (before.get(String(tp.pid)) ?? 0);
  return { ms: a.ms, freshMB: all / PAGES_PER_MB, packetThreadFreshMB: packet / PAGES_PER_MB };
}

async function main(): Promise<void> {
  const why = netnsUnavailableReason({ tun: true });
  if (why) throw new Error(`bench:one-change needs network namespaces and a TUN device: ${why}`);
  const all = benchRuleSet(n + changes, 3);
  const base = { ...all, services: all.services.slice(0, n) };
  const extra = all.services.slice(n);
  const ns = `tp-chg${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-chg-'));
  addNetns(ns);
  let tp: TunproxyProc | null = null;
  try {
    const rulesFile = join(dir, 'rules.json');
    writeFileSync(rulesFile, JSON.stringify({ ...base, services: base.services.slice(0, 1) }));
    const socket = join(dir, 'api.sock');
    tp = new TunproxyProc({ ns, tun: 'tpchg0', rulesFile, stateDir: join(dir, 'state'), socket, conntrackMax: 262144 });
    await tp.waitFor(/; ready/, 120_000);
    const put = await unixHttp(socket, 'PUT', '/v1/ruleset', JSON.stringify(base));
    if (put.status !== 200) throw new Error(`PUT /v1/ruleset: ${put.status} ${put.body.slice(0, 300)}`);
    process.stderr.write(`PUT of ${fmt(n)} services: ${fmt(put.ms, 1)} ms\n`);
    await new Promise((r) => setTimeout(r, 1000));
    const adds: Change[] = [];
    const replaces: Change[] = [];
    for (let i = 0; i < changes; i++) {
      adds.push(await timed(tp, socket, extra[i], 201));
      await new Promise((r) => setTimeout(r, 300));
      // another service's endpoints: those of a new service (other pods' addresses)
      const s = base.services[Math.floor(((i + 1) * n) / (changes + 2))];
      replaces.push(await timed(tp, socket, { ...s, endpoints: extra[i].endpoints }, 200));
      await new Promise((r) => setTimeout(r, 300));
      process.stderr.write(`change ${i + 1}: add ${fmt(adds[i].ms, 1)} ms (${fmt(adds[i].freshMB, 1)} MB fresh), replace ${fmt(replaces[i].ms, 1)} ms (${fmt(replaces[i].freshMB, 1)} MB fresh)\n`);
    }
    const row = (c: Change, k: number, what: string) => `| ${k + 1} | ${what} | ${fmt(c.ms, 1)} | ${fmt(c.freshMB, 1)} | ${fmt(c.packetThreadFreshMB, 1)} |`;
    const md = `# One-service changes in tunproxy run

One run on ${machine()}. Command: \`npm run bench:one-change -- --services ${n} --changes ${changes}\`.

A fresh \`tunproxy run\` (its own namespace) with ${fmt(n)} services in force (the full PUT: ${fmt(put.ms, 1)} ms), then one-service changes through \`PUT /v1/services/{ns}/{name}\`, 300 ms apart, each timed from the request to the answer (the packet thread has the tables in force and the journal line is synced): an addition (new VIP keys) and a replacement of another service's endpoints (the same keys). "Fresh MB": memory the process touched for the first time during the change (minor page faults), all threads and the packet thread's.

| # | change | ms | fresh MB | of which packet thread |
|---:|---|---:|---:|---:|
${adds.map((c, k) => `${row(c, k, 'add')}\n${row(replaces[k], k, 'replace endpoints')}`).join('\n')}

Medians: add ${fmt(median(adds.map((c) => c.ms)), 1)} ms (${fmt(median(adds.map((c) => c.freshMB)), 1)} MB fresh), replace ${fmt(median(replaces.map((c) => c.ms)), 1)} ms (${fmt(median(replaces.map((c) => c.freshMB)), 1)} MB fresh). The first change after a full PUT finds what the control worker built ahead when idle (RuleSetHolder.prepareIncremental).
`;
    const json = { machine: machine(), services: n, putMs: put.ms, adds, replaces };
    if (outDir === undefined) writeResults('one-change', json, md);
    else {
      mkdirSync(outDir, { recursive: true });
      writeFileSync(join(outDir, 'one-change.json'), JSON.stringify(json, null, 2) + '\n');
      writeFileSync(join(outDir, 'one-change.md'), md);
      console.log(md);
    }
  } finally {
    try {
      await tp?.stop();
    } finally {
      deleteNetns(ns);
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

main().catch((e: Error) => {
  process.stderr.write(`bench:one-change: ${e.message}\n`);
  process.exitCode = 1;
});
