/**
 * The pieces of `npm run bench:e2e` that touch processes: the load-generator
 * agents in the client namespaces, timed commands with a cap (killed by PID),
 * tunproxy started in the node namespace and spoken to through its control
 * API (or SIGHUP when this tunproxy has no API), kernel memory from
 * /proc/meminfo.
 */
import { spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { nsSpawn } from '../scripts/ns.ts';
import type { LoadResult, LoadSpec } from '../scripts/loadgen.ts';

export const ROOT = fileURLToPath(new URL('../', import.meta.url));
const LOADGEN = fileURLToPath(new URL('../scripts/loadgen.ts', import.meta.url));
const TUNPROXY = fileURLToPath(new URL('../bin/tunproxy.js', import.meta.url));

// ------------------------------------------------------------------ load generator agent

/** scripts/loadgen.ts --agent inside a namespace: one run at a time, JSON lines both ways. */
export class LoadAgent {
  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private waiter: ((line: string | null) => void) | null = null;
  private exited = false;
  private stderr = '';

  private constructor(readonly ns: string) {
    this.child = nsSpawn(ns, [process.execPath, '--import', 'tsx', LOADGEN, '--agent'], { stdio: ['pipe', 'pipe', 'pipe'], cwd: ROOT });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w(l);
      } else this.lines.push(l);
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.child.on('exit', () => {
      this.exited = true;
      if (this.waiter) this.waiter(null);
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  private next(timeoutMs: number): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.exited) return Promise.reject(new Error(`load generator in ${this.ns} stopped: ${this.stderr}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`load generator in ${this.ns} did not answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(timer);
        if (line === null) reject(new Error(`load generator in ${this.ns} stopped: ${this.stderr}`));
        else resolve(line);
      };
    });
  }

  static async start(ns: string): Promise<LoadAgent> {
    const a = new LoadAgent(ns);
    const hello = JSON.parse(await a.next(30_000)) as { ready?: boolean };
    if (!hello.ready) throw new Error(`load generator in ${ns}: unexpected greeting`);
    return a;
  }

  async run(spec: LoadSpec): Promise<LoadResult> {
    this.child.stdin!.write(JSON.stringify(spec) + '\n');
    const r = JSON.parse(await this.next((spec.seconds + 30) * 1000)) as LoadResult & { error?: string };
    if (r.error) throw new Error(`load generator in ${this.ns}: ${r.error}`);
    return r;
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    this.child.stdin!.end();
    const t0 = Date.now();
    while (!this.exited && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

// ------------------------------------------------------------------ timed commands

export interface Timed {
  ms: number;
  code: number | null;
  stderr: string;
  /** killed at the cap */
  capped: boolean;
}

/** Run argv in ns with `input` on stdin; SIGKILL by PID when it runs past capMs. */
export function timedInNs(ns: string, argv: string[], capMs: number, input?: string): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = nsSpawn(ns, argv, { stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
    let stderr = '';
    let capped = false;
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
    const timer = setTimeout(() => {
      capped = true;
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, capMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ ms: performance.now() - t0, code, stderr: stderr.trim(), capped });
    });
    if (input !== undefined) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(input);
    }
  });
}

// ------------------------------------------------------------------ memory

/** Slab + VmallocUsed + Percpu from /proc/meminfo (KiB): where netfilter's rules live. */
export function kernelMemoryKiB(): number {
  const m = readFileSync('/proc/meminfo', 'utf8');
  let sum = 0;
  for (const k of ['Slab', 'VmallocUsed', 'Percpu']) {
    const r = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(m);
    if (r) sum += Number(r[1]);
  }
  return sum;
}

/** The median of a few samples, 50 ms apart (the machine is shared: it moves). */
export async function kernelMemorySample(n = 5): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    xs.push(kernelMemoryKiB());
    await new Promise((r) => setTimeout(r, 50));
  }
  xs.sort((a, b) => a - b);
  return xs[xs.length >> 1];
}

export function rssKiB(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ tunproxy

let apiKnown: boolean | null = null;

/** Does this tree's `tunproxy run` have the control API (--socket)? */
export function tunproxyHasApi(): boolean {
  if (apiKnown === null) {
    const r = spawnSync(process.execPath, [TUNPROXY, 'run', '--help'], { encoding: 'utf8', cwd: ROOT, timeout: 60_000 });
    apiKnown = /--socket\b/.test((r.stdout ?? '') + (r.stderr ?? ''));
  }
  return apiKnown;
}

export interface HttpAnswer {
  status: number;
  body: string;
  ms: number;
}

/** One HTTP request over a Unix socket. */
export function unixHttp(socketPath: string, method: string, path: string, body?: string, timeoutMs = 600_000): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request(
      { socketPath, method, path, headers: body !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, ms: performance.now() - t0 }));
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export interface TunproxyOptions {
  ns: string;
  tun: string;
  rulesFile: string;
  stateDir: string;
  socket: string;
  conntrackMax: number;
  /** write a V8 CPU profile into this directory */
  cpuProfDir?: string;
}

/** `tunproxy run` in the node namespace, its stderr kept, stopped by its PID. */
export class TunproxyProc {
  readonly child: ChildProcess;
  log = '';
  private exited: string | null = null;
  readonly hasApi: boolean;

  constructor(readonly o: TunproxyOptions) {
    this.hasApi = tunproxyHasApi();
    const node = [process.execPath, ...(o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir] : []), TUNPROXY];
    const args = ['run', '--tun', o.tun, '--rules', o.rulesFile, '--status-interval', '0', '--conntrack-max', String(o.conntrackMax)];
    if (this.hasApi) args.push('--socket', o.socket, '--state-dir', o.stateDir);
    // the pinned connection table in the bench's own directory, not the shared default /dev/shm/tunproxy
    if (this.hasApi) args.push('--pin-dir', join(o.stateDir, 'pin'));
    this.child = nsSpawn(o.ns, [...node, ...args], { stdio: ['ignore', 'ignore', 'pipe'], cwd: ROOT });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.log += d));
    this.child.on('exit', (code, sig) => (this.exited = sig ? `signal ${sig}` : `exit ${code}`));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Wait for a log line matching re after character offset `from`; the match. */
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const t0 = Date.now();
    for (;;) {
      const m = re.exec(this.log.slice(from));
      if (m) return m;
      if (this.exited) throw new Error(`tunproxy stopped (${this.exited}): ${this.log.slice(-2000)}`);
      if (Date.now() - t0 > timeoutMs) throw new Error(`tunproxy: no ${re} in ${timeoutMs} ms: ${this.log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** SIGHUP and wait for the reload line: the wall time of a reload of --rules. */
  async reload(timeoutMs: number): Promise<number> {
    const from = this.log.length;
    const t0 = performance.now();
    process.kill(this.pid, 'SIGHUP');
    await this.waitFor(/reloaded .*generation|reload of .* rejected/, timeoutMs, from);
    const ms = performance.now() - t0;
    if (/reload of .* rejected/.test(this.log.slice(from))) throw new Error(`tunproxy rejected the reload: ${this.log.slice(from)}`);
    return ms;
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      return;
    }
    const t0 = Date.now();
    while (!this.exited && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
    if (!this.exited) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}
