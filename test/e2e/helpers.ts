/**
 * End-to-end test helpers: unique namespace names, a TUN agent driven inside a
 * namespace, a client probe, and packet parse/build helpers (full checksums,
 * written independently of dataplane/wire so they can check it).
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { formatIPv4, parseIPv4 } from '../../dataplane/addr.ts';
import { addNetns, deleteNetns, listNetns, netnsUnavailableReason, nsExec } from '../../scripts/ns.ts';

export { addNetns, deleteNetns, listNetns, nsExec, nsRun, ip, netnsPids } from '../../scripts/ns.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const TUN_AGENT = fileURLToPath(new URL('./fixtures/tun-agent.ts', import.meta.url));
export const PROBE = fileURLToPath(new URL('./fixtures/probe.ts', import.meta.url));

/** Reason the namespace tests must be skipped here, or null. */
export function netnsSkipReason(opts: { tun?: boolean } = {}): string | null {
  return netnsUnavailableReason(opts);
}

/** A namespace-name prefix unique to this test process: tp-t<pid>-<tag>. */
export function testPrefix(tag: string): string {
  return `tp-t${process.pid}-${tag}`;
}

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void;
}

/** Create namespaces (lo up, IPv6 off) that are deleted at t's teardown, also on failure. */
export function withNetns(t: Teardownable, names: string[]): void {
  t.teardown(() => {
    for (const n of names) deleteNetns(n);
  });
  for (const n of names) {
    deleteNetns(n);
    addNetns(n);
  }
}

/** Namespaces left behind whose name starts with prefix. */
export function leftoverNetns(prefix: string): string[] {
  return listNetns(prefix);
}

// ---------------------------------------------------------------- processes inside namespaces

/** Run the client probe (fixtures/probe.ts) inside ns; resolves with its JSON line. */
export async function probe(ns: string, args: string[], timeoutMs = 10_000): Promise<Record<string, any>> {
  const r = await nsExec(ns, [process.execPath, '--import', 'tsx', PROBE, ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`probe ${args.join(' ')} in ${ns} printed no JSON (exit ${r.code}): ${r.stderr || r.stdout}`);
  }
}

/** A UDP listener (probe.ts listen) inside ns: `listening` resolves once bound, `result` with the first datagram. */
export function udpListener(ns: string, port: number, waitMs = 5000): { listening: Promise<void>; result: Promise<Record<string, any>> } {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', PROBE, 'listen', '--port', String(port), '--wait', String(waitMs)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const lines = createInterface({ input: child.stdout! });
  let onListening: () => void = () => {};
  const listening = new Promise<void>((r) => (onListening = r));
  const result = new Promise<Record<string, any>>((resolve, reject) => {
    lines.on('line', (line) => {
      if (line === 'listening') onListening();
      else resolve(JSON.parse(line));
    });
    child.on('exit', (code) => {
      onListening();
      reject(new Error(`listener in ${ns} exited (${code}) without a result: ${stderr}`));
    });
  });
  return { listening, result };
}

export interface AgentError {
  code?: string;
  errno?: number;
  message: string;
}

/** The TUN agent (fixtures/tun-agent.ts) running inside a namespace, driven by JSON lines. */
export class TunAgent {
  readonly child: ChildProcess;
  #next = 1;
  #pending = new Map<number, (msg: any) => void>();
  #stderr = '';

  private constructor(child: ChildProcess) {
    this.child = child;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line);
      const cb = this.#pending.get(msg.id);
      this.#pending.delete(msg.id);
      cb?.(msg);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.#stderr += d));
    child.on('exit', () => {
      for (const cb of this.#pending.values()) cb({ ok: false, error: { message: `agent exited: ${this.#stderr}` } });
      this.#pending.clear();
    });
  }

  static async start(ns: string): Promise<TunAgent> {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', TUN_AGENT], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: ROOT,
    });
    const a = new TunAgent(child);
    await new Promise<void>((resolve, reject) => {
      a.#pending.set(0, (m) => (m.ok ? resolve() : reject(new Error(m.error.message))));
    });
    return a;
  }

  /** Send one request; resolves with { ok, result } or { ok: false, error }. */
  request(op: string, args: Record<string, unknown> = {}): Promise<{ ok: boolean; result?: any; error?: AgentError }> {
    const id = this.#next++;
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      this.child.stdin!.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  /** Like request, but throws the agent's error. */
  async call(op: string, args: Record<string, unknown> = {}): Promise<any> {
    const r = await this.request(op, args);
    if (!r.ok) throw Object.assign(new Error(r.error!.message), r.error);
    return r.result;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.write(JSON.stringify({ id: -1, op: 'exit' }) + '\n');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- packets (literal bytes, full checksums)

export const hex = (p: Uint8Array): string => Buffer.from(p).toString('hex');
export const unhex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

/** One's complement sum of bytes [start, end), folded and complemented (the Internet checksum). */
export function inetChecksum(p: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += (p[i] << 8) | p[i + 1];
  if ((end - start) & 1) sum += p[end - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function pseudoHeaderSum(p: Uint8Array, proto: number, l4len: number): number {
  let s = 0;
  for (let i = 12; i < 20; i += 2) s += (p[i] << 8) | p[i + 1];
  return s + proto + l4len;
}

export interface ParsedPacket {
  version: number;
  ihl: number;
  totalLength: number;
  ttl: number;
  protocol: number;
  src: string;
  dst: string;
  ipChecksumOk: boolean;
  /** TCP/UDP ports; ICMP: srcPort = type, dstPort = code */
  srcPort: number;
  dstPort: number;
  l4ChecksumOk: boolean;
  /** TCP flags (SYN = 0x02), 0 otherwise */
  tcpFlags: number;
  icmpId: number;
  icmpSeq: number;
  payload: Uint8Array;
}

/** Parse an IPv4 packet with TCP, UDP or ICMP; throws on anything else or a short buffer. */
export function parsePacket(p: Uint8Array): ParsedPacket {
  if (p.length < 20) throw new Error(`packet of ${p.length} bytes is shorter than an IPv4 header`);
  const version = p[0] >> 4;
  const ihl = (p[0] & 15) * 4;
  const totalLength = (p[2] << 8) | p[3];
  if (version !== 4 || totalLength > p.length || ihl < 20) throw new Error(`not a whole IPv4 packet: version ${version}, total length ${totalLength}, have ${p.length}`);
  const protocol = p[9];
  const l4 = p.subarray(ihl, totalLength);
  const u16 = (o: number): number => (l4[o] << 8) | l4[o + 1];
  let srcPort = 0;
  let dstPort = 0;
  let tcpFlags = 0;
  let icmpId = 0;
  let icmpSeq = 0;
  let payload = l4;
  let l4ChecksumOk: boolean;
  if (protocol === 17) {
    srcPort = u16(0);
    dstPort = u16(2);
    payload = l4.subarray(8);
    l4ChecksumOk = u16(6) === 0 || inetChecksum(p, ihl, totalLength, pseudoHeaderSum(p, 17, l4.length)) === 0;
  } else if (protocol === 6) {
    srcPort = u16(0);
    dstPort = u16(2);
    tcpFlags = l4[13];
    payload = l4.subarray((l4[12] >> 4) * 4);
    l4ChecksumOk = inetChecksum(p, ihl, totalLength, pseudoHeaderSum(p, 6, l4.length)) === 0;
  } else if (protocol === 1) {
    srcPort = l4[0];
    dstPort = l4[1];
    icmpId = u16(4);
    icmpSeq = u16(6);
    payload = l4.subarray(8);
    l4ChecksumOk = inetChecksum(p, ihl, totalLength) === 0;
  } else throw new Error(`protocol ${protocol} not handled by the test parser`);
  const addr = (o: number): string => formatIPv4(((p[o] << 24) | (p[o + 1] << 16) | (p[o + 2] << 8) | p[o + 3]) >>> 0);
  return {
    version,
    ihl,
    totalLength,
    ttl: p[8],
    protocol,
    src: addr(12),
    dst: addr(16),
    ipChecksumOk: inetChecksum(p, 0, ihl) === 0,
    srcPort,
    dstPort,
    l4ChecksumOk,
    tcpFlags,
    icmpId,
    icmpSeq,
    payload,
  };
}

function putAddr(p: Uint8Array, o: number, text: string): void {
  const a = parseIPv4(text);
  if (a < 0) throw new Error(`bad IPv4 address ${text}`);
  p[o] = a >>> 24;
  p[o + 1] = (a >>> 16) & 255;
  p[o + 2] = (a >>> 8) & 255;
  p[o + 3] = a & 255;
}

/** Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum of a packet, in place. */
export function fixChecksums(p: Uint8Array): Uint8Array {
  const ihl = (p[0] & 15) * 4;
  const total = (p[2] << 8) | p[3];
  p[10] = p[11] = 0;
  const c = inetChecksum(p, 0, ihl);
  p[10] = c >> 8;
  p[11] = c & 255;
  const proto = p[9];
  const off = proto === 17 ? 6 : proto === 6 ? 16 : proto === 1 ? 2 : -1;
  if (off < 0) return p;
  p[ihl + off] = p[ihl + off + 1] = 0;
  let l = proto === 1 ? inetChecksum(p, ihl, total) : inetChecksum(p, ihl, total, pseudoHeaderSum(p, proto, total - ihl));
  if (proto === 17 && l === 0) l = 0xffff;
  p[ihl + off] = l >> 8;
  p[ihl + off + 1] = l & 255;
  return p;
}

function ipHeader(len: number, proto: number, src: string, dst: string, ttl = 64): Uint8Array {
  const p = new Uint8Array(len);
  p[0] = 0x45;
  p[2] = len >> 8;
  p[3] = len & 255;
  p[4] = 0x12; // identification 0x1234
  p[5] = 0x34;
  p[6] = 0x40; // DF
  p[8] = ttl;
  p[9] = proto;
  putAddr(p, 12, src);
  putAddr(p, 16, dst);
  return p;
}

export function buildUdp(o: { src: string; dst: string; srcPort: number; dstPort: number; payload: Uint8Array | string; ttl?: number }): Uint8Array {
  const payload = typeof o.payload === 'string' ? new TextEncoder().encode(o.payload) : o.payload;
  const p = ipHeader(28 + payload.length, 17, o.src, o.dst, o.ttl);
  p[20] = o.srcPort >> 8;
  p[21] = o.srcPort & 255;
  p[22] = o.dstPort >> 8;
  p[23] = o.dstPort & 255;
  p[24] = (8 + payload.length) >> 8;
  p[25] = (8 + payload.length) & 255;
  p.set(payload, 28);
  return fixChecksums(p);
}

export function buildIcmpEcho(o: { src: string; dst: string; type?: number; id: number; seq: number; payload?: Uint8Array }): Uint8Array {
  const payload = o.payload ?? new Uint8Array(0);
  const p = ipHeader(28 + payload.length, 1, o.src, o.dst);
  p[20] = o.type ?? 8;
  p[24] = o.id >> 8;
  p[25] = o.id & 255;
  p[26] = o.seq >> 8;
  p[27] = o.seq & 255;
  p.set(payload, 28);
  return fixChecksums(p);
}

/** A copy of p with addresses/ports replaced and all checksums recomputed (a NAT done by hand). */
export function rewritePacket(p: Uint8Array, o: { src?: string; dst?: string; srcPort?: number; dstPort?: number }): Uint8Array {
  const q = new Uint8Array(p);
  const ihl = (q[0] & 15) * 4;
  if (o.src) putAddr(q, 12, o.src);
  if (o.dst) putAddr(q, 16, o.dst);
  if (o.srcPort !== undefined) {
    q[ihl] = o.srcPort >> 8;
    q[ihl + 1] = o.srcPort & 255;
  }
  if (o.dstPort !== undefined) {
    q[ihl + 2] = o.dstPort >> 8;
    q[ihl + 3] = o.dstPort & 255;
  }
  return fixChecksums(q);
}

/** Whether a process with this PID is still alive (not a zombie). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}
