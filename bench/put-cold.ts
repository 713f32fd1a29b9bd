/**
 * npm run bench:put-cold [-- --services 10000 --processes 5 --puts 3]
 *
 * A full PUT's stages in a fresh process, where `bench:e2e` measures its
 * load (the first PUT a new `tunproxy run` receives), beside the same stages
 * once the process has done them before. Each of --processes fresh node
 * processes, started with the control worker's heap (control/worker/spawn.ts:
 * its young generation and first old-generation limit), does --puts full
 * PUTs of the same synthetic rule set (bench/e2e.ts's: UDP services, 3
 * endpoints), each replacing every service's target port, and times each
 * stage: JSON.parse, validation with the model, compile, the tables to
 * shared memory and their wire form (what the control worker sends to the
 * packet thread), and the state save (the body text written to a file).
 * For each stage: the time, the memory the process touched for the first
 * time (its minor page faults, in MB), and the garbage collector's time.
 *
 * Why the fresh memory: a page a process touches for the first time costs
 * the kernel a fault and a zeroed page. On the VMs of this project that is
 * dear (the machine's own figure is printed: a 64 MB buffer written one byte
 * per 4 KiB page, ms per MB), and a first PUT touches tens of MB that a
 * later PUT finds already mapped (the heap has grown to its working size).
 *
 * Medians over the processes, per PUT (1 = the first, in a fresh process).
 * Nothing is written to bench/results/: it is a profile, read beside
 * `bench:e2e`'s load figure.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { argNum, fmt, machine, median } from './common.ts';
import { benchRuleSet } from './e2e.ts';
import { validateRuleSet } from '../control/validate.ts';
import { compile } from '../control/compile.ts';
import { shareTables, TablesEncoder } from '../dataplane/tables-wire.ts';
import { CONTROL_INITIAL_OLD_GENERATION_MB, CONTROL_YOUNG_GENERATION_MB } from '../control/worker/spawn.ts';

const n = argNum('services', 10000);
const processes = Math.max(1, argNum('processes', 5));
const puts = Math.max(1, argNum('puts', 3));
const STAGES = ['JSON.parse', 'validate + model', 'compile', 'shared tables + wire encode', 'state save (write the body)'] as const;

interface StageFigures {
  ms: number;
  freshMB: number;
  gcMs: number;
}
type PutFigures = Record<(typeof STAGES)[number] | 'whole', StageFigures>;

/** This process's minor page faults so far (every thread): pages touched for the first time. */
function minorFaults(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
}
const PAGES_PER_MB = (1 << 20) / 4096;

/** ms per MB to touch memory never touched before: a fresh 64 MB buffer written one byte per page. */
function firstTouchMsPerMB(): number {
  const mb = 64;
  const b = Buffer.allocUnsafeSlow(mb << 20);
  const t0 = performance.now();
  for (let i = 0; i < b.length; i += 4096) b[i] = 1;
  return (performance.now() - t0) / mb;
}

/** The child: --puts PUTs in this (fresh) process, one JSON line of figures per PUT. */
async function child(dir: string): Promise<void> {
  const rs = benchRuleSet(n, 3);
  const bodies = Array.from({ length: puts }, (_, k) => JSON.stringify({ ...rs, services: rs.services.map((s) => ({ ...s, ports: s.ports.map((p) => ({ ...p, targetPort: (p.targetPort as number) + k })) })) }));
  // GC entries arrive after the fact: each is counted in the stage whose time window it started in
  const gcs: Array<{ at: number; ms: number }> = [];
  const obs = new PerformanceObserver((l) => {
    for (const e of l.getEntries()) gcs.push({ at: e.startTime, ms: e.duration });
  });
  obs.observe({ entryTypes: ['gc'] });
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 20));
  const gcIn = (from: number, to: number): number => gcs.filter((g) => g.at >= from && g.at < to).reduce((a, g) => a + g.ms, 0);
  const encoder = new TablesEncoder();
  let inForce: unknown = null; // what the control worker keeps: the document, its model, the tables
  for (let k = 0; k < puts; k++) {
    await settle();
    const windows: Array<[name: (typeof STAGES)[number], from: number, to: number, ms: number, freshMB: number]> = [];
    const stage = <T>(name: (typeof STAGES)[number], fn: () => T): T => {
      const f = minorFaults();
      const t = performance.now();
      const x = fn();
      const end = performance.now();
      windows.push([name, t, end, end - t, (minorFaults() - f) / PAGES_PER_MB]);
      return x;
    };
    const f0 = minorFaults();
    const t0 = performance.now();
    const text = bodies[k];
    const doc = stage('JSON.parse', () => JSON.parse(text) as unknown);
    const v = stage('validate + model', () => validateRuleSet(doc));
    if (!v.ok) throw new Error(`the synthetic rule set is invalid: ${v.errors[0].path}: ${v.errors[0].message}`);
    const tables = stage('compile', () => compile(v.model, { generation: k + 1 }));
    const wire = stage('shared tables + wire encode', () => encoder.encode(shareTables(tables)));
    stage('state save (write the body)', () => writeFileSync(join(dir, `ruleset.${process.pid}.json`), text));
    const t1 = performance.now();
    const wholeFresh = (minorFaults() - f0) / PAGES_PER_MB;
    await settle(); // the GC entries of this PUT
    const figures = {} as PutFigures;
    for (const [name, from, to, ms, freshMB] of windows) figures[name] = { ms, freshMB, gcMs: gcIn(from, to) };
    figures.whole = { ms: t1 - t0, freshMB: wholeFresh, gcMs: gcIn(t0, t1) };
    inForce = [doc, v, tables, wire];
    process.stdout.write(JSON.stringify(figures) + '\n');
  }
  obs.disconnect();
  void inForce;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tp-putcold-'));
  try {
    const heapFlags = [`--max-semi-space-size=${CONTROL_YOUNG_GENERATION_MB / 3}`, `--initial-old-space-size=${CONTROL_INITIAL_OLD_GENERATION_MB}`];
    const runs: PutFigures[][] = [];
    const touch: number[] = [];
    for (let p = 0; p < processes; p++) {
      touch.push(firstTouchMsPerMB());
      const r = spawnSync(process.execPath, [...heapFlags, '--import', 'tsx', fileURLToPath(import.meta.url), '--child', dir, '--services', String(n), '--puts', String(puts)], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (r.status !== 0) throw new Error(`the fresh process failed (exit ${r.status}): ${r.stderr.slice(-2000)}`);
      runs.push(r.stdout.trim().split('\n').map((l) => JSON.parse(l) as PutFigures));
    }
    const cell = (k: number, s: keyof PutFigures): string => {
      const xs = runs.map((r) => r[k][s]);
      return `${fmt(median(xs.map((x) => x.ms)), 1)} ms, ${fmt(median(xs.map((x) => x.freshMB)), 1)} MB, GC ${fmt(median(xs.map((x) => x.gcMs)), 1)}`;
    };
    console.log(`bench:put-cold: ${fmt(n)} services (bench/e2e.ts's rule set), ${processes} fresh processes × ${puts} PUTs, node ${heapFlags.join(' ')}`);
    console.log(`${machine()}; touching memory for the first time here: ${fmt(median(touch), 2)} ms per MB (median of ${touch.length})`);
    console.log(`medians: time, memory touched for the first time (minor faults), garbage collection`);
    const head = ['stage', ...Array.from({ length: puts }, (_, k) => (k === 0 ? 'PUT 1 (fresh process)' : `PUT ${k + 1}`))];
    console.log(`| ${head.join(' | ')} |`);
    console.log(`|${head.map(() => '---').join('|')}|`);
    for (const s of [...STAGES, 'whole'] as const) console.log(`| ${s} | ${Array.from({ length: puts }, (_, k) => cell(k, s)).join(' | ')} |`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const ci = process.argv.indexOf('--child');
if (ci >= 0) await child(process.argv[ci + 1]);
else await main();
