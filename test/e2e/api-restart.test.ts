/**
 * A TCP connection through the lab survives restarts of tunproxy.
 *
 * `tunproxy run` in the lab's node namespace with --state-dir and --socket;
 * a client outside the cluster holds one TCP connection to a ClusterIP (an
 * echo server in each pod answers "<endpoint> <client it saw> <line>"; the
 * client is masqueraded, so the flow has an SNAT port that a new tunproxy
 * would not choose again by itself). Then:
 *   1. SIGTERM, start again with --rules: the saved connection table is
 *      restored, the connection goes on (same endpoint, same masquerade port);
 *   2. a service added through the API, SIGTERM, start WITHOUT --rules: the
 *      saved rule set is in force, the connection goes on;
 *   3. the saved rule set damaged, start without --rules: it is set aside and
 *      reported, tunproxy starts and waits; `tunproxy apply` puts rules in
 *      force, packets move, and the connection goes on;
 *   4. the control: the saved connection table removed before a start — the
 *      connection is reset, so the checks above are not vacuous.
 * These runs use --no-pin: they test the snapshot saved on SIGTERM (the path
 * an upgrade across pinned-layout versions takes); the pinned table, which
 * also survives kill -9, is tested in conntrack-pinned.test.ts.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { ApiClient } from '../../control/client.ts';
import { ROOT, netnsSkipReason, pidAlive } from './helpers.ts';

const BIN = join(ROOT, 'bin', 'tunproxy.js');
const NODE = '172.16.8.1';
const MASQ = '10.64.8.1';
const VIP = '10.32.8.10';
const EPS = ['10.64.8.13', '10.64.8.14'];
const PORT = 9000;

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-restart', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.8.0/24' },
  services: [
    {
      namespace: 'default',
      name: 'echo',
      clusterIP: VIP,
      ports: [{ name: 'tcp', protocol: 'TCP', port: PORT, targetPort: PORT }],
      endpoints: EPS.map((address) => ({ address })),
    },
  ],
};

/** One line per connection's line: "<endpoint address> <client address:port it saw> <line>". */
const ECHO_SERVER = (addr: string) => `
const net = require('net');
net.createServer((c) => {
  c.setEncoding('utf8');
  let b = '';
  c.on('data', (d) => {
    b += d;
    let i;
    while ((i = b.indexOf('\\n')) >= 0) { c.write('${addr} ' + c.remoteAddress + ':' + c.remotePort + ' ' + b.slice(0, i) + '\\n'); b = b.slice(i + 1); }
  });
  c.on('error', () => {});
}).listen(${PORT}, '${addr}', () => console.log('ready'));`;

/** A client holding one connection: lines on stdin are sent, events come back as JSON lines. */
const CLIENT = `
const net = require('net');
const s = net.connect({ host: '${VIP}', port: ${PORT} });
s.setNoDelay(true);
s.setEncoding('utf8');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
s.on('connect', () => out({ connected: true, localPort: s.localPort }));
let b = '';
s.on('data', (d) => { b += d; let i; while ((i = b.indexOf('\\n')) >= 0) { out({ echo: b.slice(0, i) }); b = b.slice(i + 1); } });
s.on('close', () => out({ closed: true }));
s.on('error', (e) => out({ error: e.code || e.message }));
require('readline').createInterface({ input: process.stdin }).on('line', (l) => s.write(l + '\\n'));`;

class Lines {
  readonly lines: string[] = [];
  private waiters: Array<() => void> = [];
  /** exited and its output read to the end */
  private closed = false;
  constructor(readonly child: ChildProcess) {
    const on = (l: string) => {
      this.lines.push(l);
      for (const w of this.waiters.splice(0)) w();
    };
    createInterface({ input: child.stdout! }).on('line', on);
    createInterface({ input: child.stderr! }).on('line', on);
    child.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
  }
  get running(): boolean {
    return !this.closed;
  }
  async waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (let i = from; ; ) {
      for (; i < this.lines.length; i++) if (re.test(this.lines[i])) return this.lines[i];
      if (!this.running) throw new Error(`exited (${this.child.exitCode ?? this.child.signalCode}) before ${re}:\n${this.lines.join("\n")}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${re} within ${timeoutMs} ms:\n${this.lines.slice(-15).join('\n')}`);
      await new Promise<void>((r) => {
        const tm = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(tm);
          r();
        });
      });
    }
  }
  async stop(): Promise<void> {
    if (!this.running) return;
    const exited = new Promise((r) => this.child.once('close', r));
    this.child.kill('SIGTERM');
    const kill = setTimeout(() => this.running && this.child.kill('SIGKILL'), 8000);
    await exited;
    clearTimeout(kill);
  }
}

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `tunproxy restart end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-rs`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-restart-'));
  const labState = join(dir, 'lab');
  const stateDir = join(dir, 'state');
  const socket = join(dir, 'api.sock');
  const rules = join(dir, 'rules.json');
  writeFileSync(rules, JSON.stringify(ruleSet, null, 2));
  const children: Lines[] = [];
  let lab: Lab | null = null;
  t.teardown(async () => {
    try {
      for (const c of children) await c.stop();
    } finally {
      await labDown(prefix, { stateDir: labState });
      rmSync(dir, { recursive: true, force: true });
    }
  });

  lab = await labUp({ prefix, ruleSet, stateDir: labState, podServers: false });
  const theLab = lab;
  const api = new ApiClient({ socket });

  const tunproxy = async (withRules: boolean, ready = true): Promise<Lines> => {
    const argv = ['netns', 'exec', theLab.node.ns, process.execPath, BIN, 'run', '--tun', theLab.tunName, '--state-dir', stateDir, '--no-pin', '--socket', socket, '--status-interval', '0', ...(withRules ? ['--rules', rules] : [])];
    const p = new Lines(spawn('ip', argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    children.push(p);
    if (ready) await p.waitFor(/attached to .*; ready/, 30_000);
    else await p.waitFor(/control API on /, 30_000);
    return p;
  };
  const cli = (args: string[]): Promise<{ code: number | null; stderr: string }> =>
    new Promise((resolve) => {
      const c = spawn(process.execPath, [BIN, ...args, '--socket', socket], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr!.on('data', (d) => (stderr += d));
      c.on('close', (code) => resolve({ code, stderr }));
    });

  for (const ep of EPS) {
    const s = new Lines(theLab.spawn(theLab.podFor(ep).ns, [process.execPath, '-e', ECHO_SERVER(ep)], { stdio: ['ignore', 'pipe', 'pipe'] }));
    children.push(s);
    await s.waitFor(/^ready$/, 10_000);
  }

  let tp = await tunproxy(true);
  const client = new Lines(theLab.spawn(theLab.client.ns, [process.execPath, '-e', CLIENT], { stdio: ['pipe', 'pipe', 'pipe'] }));
  children.push(client);
  let seq = 0;
  /** send a line, wait for its echo: "<endpoint> <client seen> <n>" */
  const roundTrip = async (timeoutMs = 15_000): Promise<{ endpoint: string; seen: string }> => {
    const n = ++seq;
    const from = client.lines.length;
    client.child.stdin!.write(`${n}\n`);
    const line = await client.waitFor(new RegExp(`"echo":"\\S+ \\S+ ${n}"|"closed"|"error"`), timeoutMs, from);
    const m = /"echo":"(\S+) (\S+) \d+"/.exec(line);
    if (!m) throw new Error(`connection lost: ${line}`);
    return { endpoint: m[1], seen: m[2] };
  };
  const flow = async () => {
    const r = await api.call<{ flows: Array<{ state: string; endpoint: string; reply: { dport: number } }> }>('GET', '/v1/conntrack', { query: { protocol: 'tcp', dport: PORT } });
    return r.body.flows;
  };
  let first = { endpoint: '', seen: '' };
  let before: Awaited<ReturnType<typeof flow>> = [];

  t.test('0. one TCP connection through tunproxy to a ClusterIP, masqueraded', async (t) => {
    t.match(tp.lines.join('\n'), /control API on .*api\.sock/);
    await client.waitFor(/"connected":true/, 10_000);
    first = await roundTrip();
    t.ok(EPS.includes(first.endpoint), `the connection reaches ${first.endpoint}`);
    t.match(first.seen, new RegExp(`^${MASQ.replaceAll('.', '\\.')}:\\d+$`), `masqueraded: the pod sees ${first.seen}`);
    t.same(await roundTrip(), first, 'the same connection, the same translation');
    before = await flow();
    t.equal(before.length, 1, 'one flow, seen through the API');
    t.equal(before[0].state, 'ESTABLISHED');
    t.equal(`${MASQ}:${before[0].reply.dport}`, first.seen, 'its masquerade port is the one the pod sees');
  });

  t.test('1. restart with --rules: the connection table comes back, the connection goes on', async (t) => {
    await tp.stop();
    t.match(tp.lines.join('\n'), /connection table saved to .*tun0\.conntrack\.json: 1 flows/);
    t.ok(existsSync(join(stateDir, `${theLab.tunName}.conntrack.json`)));
    t.ok(existsSync(join(stateDir, `${theLab.tunName}.ruleset.json`)), 'the rule set is saved too');
    tp = await tunproxy(true);
    t.match(tp.lines.join('\n'), /connection table restored from .*: 1 flows/);
    t.notOk(existsSync(join(stateDir, `${theLab.tunName}.conntrack.json`)), 'consumed');
    t.same(await roundTrip(), first, 'same endpoint, same masquerade port: the same connection');
    t.same(await roundTrip(), first);
    const after = await flow();
    t.equal(after.length, 1);
    t.equal(after[0].reply.dport, before[0].reply.dport);
  });

  t.test('2. a change through the API is saved; a start without --rules comes back with it', async (t) => {
    const add = await api.request('PUT', '/v1/services/default/extra', { body: { clusterIP: '10.32.8.20', ports: [{ name: '', protocol: 'UDP', port: 53 }], endpoints: [{ address: EPS[0] }] } });
    t.equal(add.status, 201);
    const want = (await api.call<RuleSet>('GET', '/v1/ruleset')).body;
    t.equal(want.services.length, 2);
    await tp.stop();
    tp = await tunproxy(false);
    // generations go on across restarts: 1 (--rules), 2 (--rules again after the first restart), 3 (the PUT), then 4
    t.match(tp.lines.join('\n'), /rule set saved in .*tun0\.ruleset\.json with 1 change from .*tun0\.ruleset\.journal .*generation 4, 2 services/, 'the file and the line its journal got for the PUT');
    t.same((await api.call<RuleSet>('GET', '/v1/ruleset')).body, want, 'the rule set it had');
    t.same(await roundTrip(), first, 'and the connection goes on');
  });

  t.test('3. a damaged saved rule set is set aside and reported; tunproxy starts and waits for rules', async (t) => {
    await tp.stop();
    const path = join(stateDir, `${theLab.tunName}.ruleset.json`);
    const damaged = readFileSync(path, 'utf8').slice(0, 100);
    writeFileSync(path, damaged);
    tp = await tunproxy(false, false);
    const report = tp.lines.find((l) => /is damaged/.test(l))!;
    t.match(report, /the saved rule set .*tun0\.ruleset\.json is damaged \(not valid JSON .*\): moved to .*tun0\.ruleset\.json\.damaged-/);
    const aside = readdirSync(stateDir).filter((f) => f.includes('.damaged-'));
    t.equal(aside.length, 1);
    t.equal(readFileSync(join(stateDir, aside[0]), 'utf8'), damaged, 'kept as it was');
    t.ok(tp.running, 'the damaged file did not prevent the start');
    const ready = await api.request<{ reasons: string[] }>('GET', '/readyz');
    t.equal(ready.status, 503);
    t.match(ready.body.reasons, [/no rule set in force/, /no TUN device attached/]);
    const r = await cli(['apply', '-f', rules]);
    t.equal(r.code, 0, r.stderr);
    await tp.waitFor(/attached to .*; ready/, 10_000);
    t.match(tp.lines.join('\n'), /connection table restored from .*: 1 flows/, 'restored when the packets start moving');
    t.equal((await api.request('GET', '/readyz')).status, 200);
    t.same(await roundTrip(), first, 'the connection goes on');
    t.same(readdirSync(stateDir).filter((f) => f.includes('.damaged-')), aside, 'the damaged copy is not overwritten');
    t.equal(JSON.parse(readFileSync(path, 'utf8')).services.length, 1, 'the rules applied are saved');
  });

  t.test("4. control: without the saved connection table, the connection's next packet is decided anew", async (t) => {
    await tp.stop();
    rmSync(join(stateDir, `${theLab.tunName}.conntrack.json`));
    tp = await tunproxy(true);
    t.notMatch(tp.lines.join('\n'), /connection table restored/);
    // with the table restored (tests 1-3) the connection's packets were established flows; without it, the next
    // one is a new flow to tunproxy (picked up mid-stream, like netfilter's tcp_loose) and gets a new random choice
    const r = await roundTrip(5_000).then((x) => x, (e: Error) => e);
    const stats = (await api.call<{ counters: { events: { new_flows: number } } }>('GET', '/v1/stats')).body;
    t.ok(stats.counters.events.new_flows >= 1, `the old connection's packet was a new flow (new_flows=${stats.counters.events.new_flows})`);
    if (r instanceof Error) t.match(r.message, /connection lost|no .* within/, 'and the connection broke');
    else t.comment(`the new choice was ${r.endpoint} again with the same port: the connection went on by chance (1 in ${EPS.length})`);
    await tp.stop();
    t.notOk(pidAlive(tp.child.pid!), 'stopped');
  });
}
