/**
 * tunproxy end to end: packets keep moving while the control side works. A
 * UDP stream with sequence numbers goes through a ClusterIP (client → TUN →
 * endpoint pod and back) while a rule set of 100 000 services replaces the
 * one in force twice through the API (parse, validation and compile in the
 * control worker), and while the connection table is listed. Every datagram
 * is counted; the longest silence at the receiver is reported.
 *
 * TUNPROXY_E2E_SERVICES sets the rule set's size (default 100 000).
 * The bounds are generous (the machine is shared by other work): the
 * figures are printed, beside a baseline stream with no rule-set change.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { ApiClient } from '../../control/client.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { netnsSkipReason } from './helpers.ts';
import { TunproxyProcess } from '../../scripts/harness.ts';
import { syntheticRuleSet } from '../../bench/gen.ts';

const N = Number(process.env.TUNPROXY_E2E_SERVICES ?? 100_000);
const PPS = 2000;
const SECONDS = 14;
const NODE = '172.16.8.1';
const MASQ = '10.64.8.1';
const VIP = '10.32.8.10';
const EP = '10.64.8.13';

function small(): RuleSet {
  return {
    apiVersion: 'tunproxy.dev/v1',
    node: { name: 'node-e2e', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.8.0/24' },
    services: [{ namespace: 'default', name: 'echo', clusterIP: VIP, ports: [{ name: 'u', protocol: 'UDP', port: 7000, targetPort: 7000 }], endpoints: [{ address: EP, nodeLocal: true }] }],
  };
}

/** The small rule set plus N synthetic services (ClusterIPs in 10.96.0.0/12); `variant` changes every endpoint. */
function large(variant: number): Buffer {
  const s = small();
  const bulk = syntheticRuleSet(N, { endpoints: 2, nodePorts: 0, podBase: variant ? '10.66.0.10' : '10.65.0.10', nodeAddresses: s.node.addresses, clusterCIDR: s.node.clusterCIDR ?? undefined });
  return Buffer.from(JSON.stringify({ ...s, services: [...s.services, ...bulk.services] }));
}

function stream(ns: string, seconds = SECONDS): Promise<{ sent: number; received: number; lost: number; duplicated: number; maxGapMs: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, new URL('./fixtures/udp-seq.mjs', import.meta.url).pathname, VIP, '7000', String(PPS), String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`udp-seq exited ${code}: ${out}`))));
  });
}

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `tunproxy end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-cw`;
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-e2e-cw-'));
  const rules = join(stateDir, 'rules.json');
  writeFileSync(rules, JSON.stringify(small()));
  let tp: TunproxyProcess | null = null;
  t.teardown(async () => {
    try {
      // TUNPROXY_E2E_DUMP=FILE keeps what tunproxy printed (e.g. with TUNPROXY_E2E_NODE_ARGS=--trace-gc)
      if (process.env.TUNPROXY_E2E_DUMP && tp) writeFileSync(process.env.TUNPROXY_E2E_DUMP, tp.lines.join('\n') + '\n');
      await tp?.stop();
    } finally {
      await labDown(prefix, { stateDir });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
  const lab: Lab = await labUp({ prefix, ruleSet: small(), stateDir });
  const tpDir = join(stateDir, 'tp');
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules, stateDir: tpDir, args: ['--max-body', String(512 * 1024 * 1024)], nodeArgs: process.env.TUNPROXY_E2E_NODE_ARGS ? process.env.TUNPROXY_E2E_NODE_ARGS.split(' ') : [] });
  const api = new ApiClient({ socket: join(tpDir, 'api.sock') });
  const bodies = [large(0), large(1)];

  t.test(`a UDP stream at ${PPS} datagrams/s through a ClusterIP while ${N} services are PUT twice and the connection table is listed`, async (t) => {
    // the same stream with nothing else to do: what this machine's load costs by itself
    const base = await stream(lab.client.ns, 5);
    t.comment(`baseline, no rule-set change: ${JSON.stringify(base)}`);
    const done = stream(lab.client.ns);
    await new Promise((r) => setTimeout(r, 1500));
    const gens: number[] = [];
    for (const body of bodies) {
      const t0 = Date.now();
      const r = await api.request<{ generation: number; mode: string; servicePorts: number }>('PUT', '/v1/ruleset', { body, contentType: 'application/json' });
      t.equal(r.status, 200, `PUT of ${N + 1} services accepted in ${Date.now() - t0} ms (${r.body.mode})`);
      t.equal(r.body.servicePorts, N + 1);
      gens.push(r.body.generation);
    }
    const list = await api.request<string>('GET', '/v1/conntrack?format=text');
    t.match(list.text, new RegExp(`udp .* dst=${VIP.replace(/\./g, '\\.')} .*dport=7000`), 'the stream is in the listing');
    const s = await done;
    t.comment(`during the PUTs and the listing: ${JSON.stringify(s)}`);
    t.ok(s.sent >= PPS * SECONDS, 'every datagram sent');
    t.equal(s.duplicated, 0, 'none duplicated');
    // generous bounds (the machine is shared; the bars are bench:reliability's, run alone):
    // with the API in the packet thread such a PUT lost 40-45 % and went silent for seconds
    // when the machine's load alone loses datagrams (the baseline), the bounds widen with it
    const lossBound = Math.max(0.05, 2 * (base.lost / base.sent) + 0.01);
    const gapBound = Math.max(1000, 3 * base.maxGapMs);
    t.ok(s.lost <= s.sent * lossBound, `lost ${s.lost} of ${s.sent} (bound ${(lossBound * 100).toFixed(1)} %)`);
    t.ok(s.maxGapMs < gapBound, `longest silence at the receiver ${s.maxGapMs} ms (bound ${gapBound} ms)`);
    const st = await api.request<{ generation: number; packetThread: { eventLoopDelay: { maxMs: number; p99Ms: number } } }>('GET', '/v1/stats');
    t.equal(st.body.generation, gens[1], 'the last PUT is in force');
    t.comment(`tunproxy's packet thread, event-loop delay since start: ${JSON.stringify(st.body.packetThread.eventLoopDelay)}`);
  });
}
