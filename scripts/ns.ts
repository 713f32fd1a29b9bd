/**
 * Small helpers to run commands inside network namespaces (iproute2's
 * `ip netns exec`), used by the lab, the demo and the end-to-end tests.
 * Everything here acts on named namespaces only; nothing touches the root
 * namespace's links, addresses or routes.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** text written to the command's standard input */
  input?: string;
  /** milliseconds before the command is killed (default 30 s) */
  timeoutMs?: number;
  /** do not throw when the command fails: return its result */
  allowFail?: boolean;
}

function describe(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/** Run argv synchronously; throws an Error naming the command, its exit status and stderr when it fails. */
export function run(argv: string[], opts: RunOptions = {}): ExecResult {
  const r = spawnSync(argv[0], argv.slice(1), {
    input: opts.input,
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 30_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  const res: ExecResult = { code: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if (!opts.allowFail) {
    if (r.error) throw new Error(`\`${describe(argv)}\` could not run: ${r.error.message}`, { cause: r.error });
    if (r.status !== 0)
      throw new Error(
        `\`${describe(argv)}\` failed (${r.signal ? `signal ${r.signal}` : `exit ${r.status}`}): ${res.stderr.trim() || res.stdout.trim()}`,
      );
  }
  return res;
}

/** `ip ARGS...`, throwing on failure; returns stdout. */
export function ip(args: string[], opts: RunOptions = {}): string {
  return run(['ip', ...args], opts).stdout;
}

/** Run many iproute2 commands in one process (`ip -n NS -batch -`); lines like "route add 10.96.0.10/32 dev tun0". */
export function ipBatch(ns: string, lines: string[], family?: 6): void {
  if (lines.length === 0) return;
  // (a batch line takes no options: IPv6 rules and routes without an address in them need `ip -6 -batch`)
  run(['ip', '-n', ns, ...(family === 6 ? ['-6'] : []), '-batch', '-'], { input: lines.join('\n') + '\n' });
}

/** argv run inside namespace ns (synchronously); throws on failure. Returns stdout. */
export function nsRun(ns: string, argv: string[], opts: RunOptions = {}): string {
  return run(['ip', 'netns', 'exec', ns, ...argv], opts).stdout;
}

/** argv run inside ns; resolves with its result whatever the exit status (never rejects on a non-zero exit). */
export function nsExec(ns: string, argv: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** Spawn argv inside ns (`ip netns exec` execs, so child.pid is the command's own PID). */
export function nsSpawn(ns: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, ...argv], opts);
}

/** Set sysctls inside ns, e.g. { 'net.ipv4.ip_forward': 1 }. */
export function nsSysctl(ns: string, values: Record<string, string | number>): void {
  const args = Object.entries(values).map(([k, v]) => `${k}=${v}`);
  if (args.length) nsRun(ns, ['sysctl', '-q', '-w', ...args]);
}

/** Named network namespaces (those under /run/netns), optionally only those starting with prefix. */
export function listNetns(prefix = ''): string[] {
  let names: string[];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return [];
  }
  return names.filter((n) => n.startsWith(prefix)).sort();
}

/** Create a named namespace with lo up and IPv6 off (so no router solicitations show up on a TUN). */
export function addNetns(name: string): void {
  ip(['netns', 'add', name]);
  nsSysctl(name, { 'net.ipv6.conf.all.disable_ipv6': 1, 'net.ipv6.conf.default.disable_ipv6': 1 });
  ip(['-n', name, 'link', 'set', 'lo', 'up']);
}

/** Delete a named namespace; no error when it does not exist. */
export function deleteNetns(name: string): void {
  if (!listNetns().includes(name)) return;
  run(['ip', 'netns', 'delete', name], { allowFail: true });
}

/** PIDs of the processes inside ns (`ip netns pids`). */
export function netnsPids(ns: string): number[] {
  const r = run(['ip', 'netns', 'pids', ns], { allowFail: true });
  if (r.code !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Why namespace tests cannot run here, or null when they can (root or CAP_NET_ADMIN, iproute2, /dev/net/tun). */
export function netnsUnavailableReason(opts: { tun?: boolean } = {}): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (!hasCapNetAdmin()) return 'needs root or CAP_NET_ADMIN (network namespaces, TUN devices)';
  if (run(['ip', '-V'], { allowFail: true }).code !== 0) return 'iproute2 (`ip`) is not installed';
  if (opts.tun !== false) {
    let isChar = false;
    try {
      isChar = statSync('/dev/net/tun').isCharacterDevice();
    } catch {
      isChar = false;
    }
    if (!isChar) return '/dev/net/tun is missing (the tun module is not loaded)';
  }
  return null;
}

function hasCapNetAdmin(): boolean {
  let status = '';
  try {
    status = readFileSync('/proc/self/status', 'utf8');
  } catch {
    return process.getuid?.() === 0;
  }
  const m = /^CapEff:\s*([0-9a-f]+)/m.exec(status);
  return !!m && (BigInt('0x' + m[1]) & (1n << 12n)) !== 0n; // CAP_NET_ADMIN = 12
}
