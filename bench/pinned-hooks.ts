/**
 * node --import tsx bench/pinned-hooks.ts [--rounds N] [--flows N] [--repeat N]
 *
 * What the pinned tables' hooks cost per established packet in each family:
 * a conntrack lookup and update of every one of --flows UDP flows (65 536 by
 * default, masqueraded), in a loop, with the plain table and with the pinned
 * one (records in /dev/shm), IPv4 (Conntrack, PinnedConntrack) and IPv6
 * (Conntrack6, PinnedConntrack6). Each variant runs in its own process (no
 * shared JIT state), the four processes taken in turn --repeat times (5),
 * best round of --rounds (20) of all (--rounds 3 --repeat 1 for a smoke run). Prints ns per packet and the pinned hooks' extra cost per family;
 * writes no results file (bench:packet is the reference for the packet path).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { argNum } from './common.ts';
import { Conntrack, CT_DIR_ORIGINAL } from '../dataplane/conntrack.ts';
import { Conntrack6 } from '../dataplane/conntrack6.ts';
import { openPinnedConntrack } from '../dataplane/conntrack-pinned.ts';
import { openPinnedConntrack6 } from '../dataplane/conntrack-pinned6.ts';

const ROUNDS = argNum('rounds', 20);
const F = argNum('flows', 65536);
const REPEAT = argNum('repeat', 5);
const NOW = 1000;
const VARIANTS = ['ipv4', 'ipv4-pinned', 'ipv6', 'ipv6-pinned'] as const;

function run4(ct: Conntrack): number {
  const info = { serviceName: 'default/dns:dns', serviceIndex: 0, endpointAddr: 0x0a400007, endpointPort: 53, masquerade: true };
  for (let i = 0; i < F; i++) {
    const e = ct.insert(17, 0xc0a80000 + (i >>> 10), 0x0a200001, 1024 + (i & 1023), 53, 0x0a400007, 0x0a400001, 53, i & 0xffff, NOW, info)!;
    ct.update(e, CT_DIR_ORIGINAL, 0, 92, NOW);
  }
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < F; i++) {
      const e = ct.lookup(17, 0xc0a80000 + (i >>> 10), 0x0a200001, 1024 + (i & 1023), 53, NOW)!;
      ct.update(e, ct.lastDirection, 0, 92, NOW);
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / F);
  }
  return best;
}

function run6(ct: Conntrack6): number {
  const t = new Uint32Array(16);
  const p = new Uint32Array(8);
  const fill = (i: number) => {
    t[0] = 0x20010db8; t[3] = i >>> 10; t[4] = 0xfd000010; t[7] = 0xa; t[8] = 0xfd000010; t[11] = 7; t[12] = 0xfd000010; t[15] = 1;
    p[0] = t[0]; p[3] = t[3]; p[4] = t[4]; p[7] = t[7];
  };
  const info = { serviceName: 'default/dns:dns', serviceIndex: 0, masquerade: true };
  for (let i = 0; i < F; i++) {
    fill(i);
    const e = ct.insert6(17, t, 1024 + (i & 1023), 53, 53, i & 0xffff, NOW, info)!;
    ct.update(e, CT_DIR_ORIGINAL, 0, 92, NOW);
  }
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < F; i++) {
      fill(i);
      const e = ct.lookup6(17, p, 0, 4, 1024 + (i & 1023), 53, NOW)!;
      ct.update(e, ct.lastDirection, 0, 92, NOW);
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / F);
  }
  return best;
}

const variant = process.argv[process.argv.indexOf('--variant') + 1];
if (process.argv.includes('--variant')) {
  const dir = mkdtempSync('/dev/shm/tp-pin-hooks-');
  const max = Math.max(F, 1024);
  try {
    const o = { dir, maxEntries: max, clock: () => NOW };
    const ns =
      variant === 'ipv4' ? run4(new Conntrack(o)) :
      variant === 'ipv4-pinned' ? run4(openPinnedConntrack({ ...o, name: 'b.ct' }).conntrack) :
      variant === 'ipv6' ? run6(new Conntrack6(o)) :
      run6(openPinnedConntrack6({ ...o, name: 'b.ct6' }).conntrack);
    process.stdout.write(`${ns}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
} else {
  const self = fileURLToPath(import.meta.url);
  const ns: Record<string, number> = {};
  for (let k = 0; k < REPEAT; k++) {
    for (const v of VARIANTS) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', self, '--variant', v, '--rounds', String(ROUNDS), '--flows', String(F)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${v}: ${r.stderr}`);
      ns[v] = Math.min(ns[v] ?? Infinity, Number(r.stdout.trim()));
    }
  }
  for (const v of VARIANTS) console.log(`${v.padEnd(12)} ${ns[v].toFixed(1)} ns per established packet (lookup + update), ${F} flows`);
  console.log(`pinned hooks: IPv4 +${(ns['ipv4-pinned'] - ns.ipv4).toFixed(1)} ns, IPv6 +${(ns['ipv6-pinned'] - ns.ipv6).toFixed(1)} ns per packet`);
}
