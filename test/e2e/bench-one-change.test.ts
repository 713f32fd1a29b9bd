/**
 * CI smoke of `npm run bench:one-change`: a real `tunproxy run` in a namespace
 * of its own, 300 services, two additions and two replacements, into a
 * temporary directory: every change answered (201 / 200, else the run
 * fails), each timed and its fresh memory counted, the namespace gone after.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listNetns, netnsUnavailableReason } from '../../scripts/ns.ts';
import { ROOT } from './helpers.ts';

const reason = netnsUnavailableReason({ tun: true });
t.test('bench:one-change: each one-service change timed in a real tunproxy run', { skip: reason ?? false, timeout: 120_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'tp-bench-chg-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const r = await new Promise<{ code: number | null; stderr: string; pid: number }>((resolve) => {
    const c = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'one-change.ts'), '--services', '300', '--changes', '2', '--out-dir', out], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('close', (code) => resolve({ code, stderr, pid: c.pid! }));
  });
  t.equal(r.code, 0, r.stderr.slice(-2000));
  const j = JSON.parse(readFileSync(join(out, 'one-change.json'), 'utf8')) as { services: number; putMs: number; adds: Record<string, number>[]; replaces: Record<string, number>[] };
  t.equal(j.services, 300);
  t.ok(j.putMs > 0, `the full PUT timed: ${j.putMs} ms`);
  for (const [what, list] of [['add', j.adds], ['replace', j.replaces]] as const) {
    t.equal(list.length, 2, `two of each: ${what}`);
    for (const c of list) {
      t.same(Object.keys(c).sort(), ['freshMB', 'ms', 'packetThreadFreshMB'], `${what}: its fields`);
      t.ok(c.ms > 0 && c.ms < 60_000, `${what}: answered in ${c.ms} ms`);
      t.ok(c.freshMB >= c.packetThreadFreshMB && c.packetThreadFreshMB >= 0, `${what}: ${c.freshMB} MB fresh, of which the packet thread ${c.packetThreadFreshMB}`);
    }
  }
  t.match(readFileSync(join(out, 'one-change.md'), 'utf8'), /\| 2 \| replace endpoints \|/, 'the table has every change');
  t.same(listNetns(`tp-chg${r.pid}`), [], 'its namespace is gone');
});
