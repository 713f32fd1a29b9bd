/**
 * The kernel judges the IPv6 writers: the ip6tables-restore input loads with
 * both backends (`--test`, then for real), `nft -c -f` accepts the `ip6
 * kube-proxy` table and it loads, and what ip6tables-save prints back parses as
 * IPv6 text and walks to the same verdicts as the writer's own text. A
 * namespace of its own (tp-ip6t<pid>), removed at the end, also on failure.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { RuleSet } from '../../control/types.ts';
import { validateRuleSet } from '../../control/validate.ts';
import { writeIptables } from '../../control/iptables/writer.ts';
import { importIptables } from '../../control/iptables/importer.ts';
import { parseIptablesSave } from '../../control/iptables/parser.ts';
import { LinearEvaluator } from '../../control/iptables/linear.ts';
import { writeNftables } from '../../control/nftables/writer.ts';
import { parseIPv6 } from '../../dataplane/addr6.ts';
import { PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import fc from 'fast-check';
import { arbDualStackRuleSet } from '../support/arb-dualstack.ts';
import { ruleSetModel } from '../../control/model.ts';
import { compile } from '../../control/compile.ts';
import { compiledVerdict6 } from '../../dataplane/tables6.ts';

const NS = `tp-ip6t${process.pid}`;
/** a second, fresh namespace for traffic: only the legacy backend's rules in it */
const NS_TRAFFIC = `tp-ip6t${process.pid}-k`;

function run(cmd: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd[0], cmd.slice(1), { input, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (CAP_NET_ADMIN) for a network namespace, ip6tables-restore and nft';
  for (const tool of ['ip', 'ip6tables-legacy-restore', 'ip6tables-nft-restore', 'ip6tables-legacy-save', 'ip6tables-nft-save', 'nft']) {
    if (run(['sh', '-c', `command -v ${tool}`]).code !== 0) return `${tool} is not installed`;
  }
  return null;
}

const RS = JSON.parse(readFileSync(new URL('../fixtures/iptables/dualstack-ruleset.json', import.meta.url), 'utf8')) as RuleSet;

const reason = skipReason();
if (reason) {
  t.plan(0, `ip6tables and nft in a namespace skipped: ${reason}`);
} else {
  const inNs = (cmd: string[], input?: string) => run(['ip', 'netns', 'exec', NS, ...cmd], input);
  const cleanup = () => {
    run(['ip', 'netns', 'del', NS]);
    run(['ip', 'netns', 'del', NS_TRAFFIC]);
  };
  cleanup();
  const add = run(['ip', 'netns', 'add', NS]);
  if (add.code !== 0) throw new Error(`ip netns add ${NS}: ${add.stderr}`);
  t.teardown(cleanup);
  process.on('exit', cleanup);
  const v = validateRuleSet(RS);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));

  t.test('ip6tables-legacy-restore and ip6tables-nft-restore accept the IPv6 rules; the save walks as the writer\'s text', async (t) => {
    const text = writeIptables(v.model, { family: 6 });
    const bare = writeIptables(v.model, { family: 6, withHooks: false });
    const pkts = [
      [PROTO_TCP, '2001:db8:7::7', 'fd00:10:96::a', 80],
      [PROTO_UDP, 'fd00:10:64:5::5', 'fd00:10:96::a', 53],
      [PROTO_TCP, '2001:db8:7::7', 'fd00:50::2', 30080],
      [PROTO_TCP, '2001:db8:7::7', 'fd00:10:96::b', 443],
      [PROTO_TCP, '2001:db8:203:1::1', '2001:db8:5::8', 8080],
      [PROTO_TCP, '2001:db8:204::1', '2001:db8:5::8', 8080],
      [PROTO_TCP, '2001:db8:7::7', '2001:db8:99::22', 8080],
      [PROTO_SCTP, '2001:db8:7::7', 'fd00:10:96::d', 9000],
    ] as const;
    const walk = (saved: string) => {
      const parsed = parseIptablesSave(saved, { family: 6 });
      t.same(parsed.errors, [], 'parses as ip6tables text');
      const ev = new LinearEvaluator(parsed, { localAddresses: RS.node.addresses });
      return pkts.map(([proto, src, dst, dport]) => ev.evaluate6({ proto, src: parseIPv6(src)!, dst: parseIPv6(dst)!, sport: 40000, dport }));
    };
    const want = walk(text);
    for (const backend of ['legacy', 'nft']) {
      const tst = inNs([`ip6tables-${backend}-restore`, '--test'], text);
      t.equal(tst.code, 0, `ip6tables-${backend}-restore --test ${tst.stderr.trim()}`);
      const tb = inNs([`ip6tables-${backend}-restore`, '--test'], bare);
      t.equal(tb.code, 0, `without hooks too ${tb.stderr.trim()}`);
      const load = inNs([`ip6tables-${backend}-restore`], text);
      t.equal(load.code, 0, `ip6tables-${backend}-restore loads it ${load.stderr.trim()}`);
      const saved = inNs([`ip6tables-${backend}-save`]);
      t.equal(saved.code, 0);
      t.match(saved.stdout, /-j REJECT --reject-with icmp6-port-unreachable/, 'the kernel\'s REJECT in IPv6 is icmp6-port-unreachable');
      t.match(saved.stdout, /--to-destination \[fd00:10:64:1::7\]:8080/);
      t.same(walk(saved.stdout), want, `ip6tables-${backend}-save walks to the same verdicts`);
      // and the save imports (its family told from the header) to the rule set's IPv6 half
      const imp = importIptables(saved.stdout, { nodeAddresses: RS.node.addresses });
      t.same(imp.notUnderstood, [], `ip6tables-${backend}-save: everything understood`);
      t.same(imp.errors, []);
      const back = validateRuleSet(imp.ruleSet);
      t.ok(back.ok && back.model.portsOf(4).length === 0 && back.model.portsOf(6).length === v.model.portsOf(6).length, 'the IPv6 ports, and only they');
    }
  });

  t.test('20 random dual-stack rule sets: both backends accept the IPv6 rules, nft -c the ip6 table; the legacy save walks alike', async (t) => {
    const sets = fc.sample(arbDualStackRuleSet(), { numRuns: 20, seed: 613 });
    for (const [i, rs] of sets.entries()) {
      const model = ruleSetModel(rs);
      const text = writeIptables(model, { family: 6 });
      for (const tool of ['ip6tables-legacy-restore', 'ip6tables-nft-restore']) {
        const r = inNs([tool, '--test'], text);
        t.equal(r.code, 0, `${tool} --test, random ${i}${r.code ? ': ' + r.stderr.trim() : ''}`);
      }
      const n = inNs(['nft', '-c', '-f', '-'], writeNftables(model, { family: 6 }));
      t.equal(n.code, 0, `nft -c, random ${i}${n.code ? ': ' + n.stderr.trim() : ''}`);
      if (inNs(['ip6tables-legacy-restore'], text).code !== 0) continue;
      const saved = inNs(['ip6tables-legacy-save']).stdout;
      const a = new LinearEvaluator(parseIptablesSave(text, { family: 6 }), { localAddresses: rs.node.addresses });
      const b = new LinearEvaluator(parseIptablesSave(saved, { family: 6 }), { localAddresses: rs.node.addresses });
      let asked = 0;
      for (const p of model.portsOf(6)) {
        if (p.clusterIP === null) continue;
        for (const src of ['2001:db8:7::7', ...p.allReachableEndpoints.slice(0, 1).map((e) => e.address)]) {
          const pkt = { proto: p.protocolNumber, src: parseIPv6(src)!, dst: parseIPv6(p.clusterIP)!, sport: 40000, dport: p.port.port };
          const va = a.evaluate6(pkt);
          const vb = b.evaluate6(pkt);
          if (JSON.stringify(va) !== JSON.stringify(vb)) t.fail(`random ${i}, ${p.name} from ${src}: writer's text ${JSON.stringify(va)}, saved ${JSON.stringify(vb)}`);
          asked++;
        }
      }
      t.ok(true, `random ${i}: ${asked} packets walk alike`);
    }
  });

  t.test('nft -c -f accepts the ip6 kube-proxy table, and it loads beside the ip one', async (t) => {
    const six = writeNftables(v.model, { family: 6 });
    const c = inNs(['nft', '-c', '-f', '-'], six);
    t.equal(c.code, 0, `nft -c ${c.stderr.trim()}`);
    t.equal(inNs(['nft', '-f', '-'], six).code, 0, 'loads');
    const four = inNs(['nft', '-f', '-'], writeNftables(v.model));
    t.equal(four.code, 0, `the IPv4 table loads beside it ${four.stderr.trim()}`);
    const again = inNs(['nft', '-f', '-'], six);
    t.equal(again.code, 0, `a second full sync over the loaded table ${again.stderr.trim()}`);
    const map = inNs(['nft', 'list', 'map', 'ip6', 'kube-proxy', 'service-ips']);
    t.match(map.stdout, /fd00:10:96::a \. tcp \. 80 : goto service-/);
    t.match(map.stdout, /2001:db8:5::8 \. tcp \. 8080 : goto external-/);
    const chains = inNs(['nft', 'list', 'table', 'ip6', 'kube-proxy']).stdout;
    t.match(chains, /dnat to \[fd00:10:64:1::7\]:8080/);
  });

  t.test('the kernel agrees with the linear walk and with tunproxy\'s IPv6 tables: UDP flows from the node through the rules', async (t) => {
    const k = (cmd: string[], input?: string) => {
      const r = run(['ip', 'netns', 'exec', NS_TRAFFIC, ...cmd], input);
      if (r.code !== 0) throw new Error(`${cmd.join(' ')} in ${NS_TRAFFIC}: ${r.stderr || r.stdout}`);
      return r.stdout;
    };
    t.equal(run(['ip', 'netns', 'add', NS_TRAFFIC]).code, 0, `ip netns add ${NS_TRAFFIC}`);
    const node = 'fd00:50::2';
    // the node's IPv6 address on one end of a veth pair whose both ends are in the namespace; default route there
    k(['sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=0', 'net.ipv6.conf.default.disable_ipv6=0', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
    k(['ip', 'link', 'set', 'lo', 'up']);
    k(['ip', 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1']);
    k(['ip', 'addr', 'add', `${node}/64`, 'dev', 'v0', 'nodad']);
    k(['ip', 'link', 'set', 'v0', 'up']);
    k(['ip', 'link', 'set', 'v1', 'up']);
    k(['ip', '-6', 'route', 'add', 'default', 'dev', 'v0']);
    const text = writeIptables(v.model, { family: 6 });
    k(['ip6tables-legacy-restore'], text);
    const ev = new LinearEvaluator(parseIptablesSave(text, { family: 6 }), { localAddresses: RS.node.addresses });
    const t6 = compile(v.model).v6!;
    const send = (dst: string, dport: number, base: number, n: number) =>
      k([process.execPath, '-e', `
        const dgram = require('node:dgram');
        const [dst, dport, base, n] = [process.argv[1], +process.argv[2], +process.argv[3], +process.argv[4]];
        let left = n;
        for (let i = 0; i < n; i++) {
          const s = dgram.createSocket('udp6');
          s.on('error', () => {});
          s.bind(base + i, '${node}', () => s.send('q', dport, dst, () => { s.close(); if (--left === 0) process.exit(0); }));
        }`, dst, String(dport), String(base), String(n)]);
    /** conntrack's IPv6 UDP flows by original source port: reply source [endpoint]:port and whether they were source-NATed */
    const flows = () => {
      const all = new Map<number, { endpoint: string; snat: boolean }>();
      const line = /src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*?src=(\S+) dst=\S+ sport=(\d+)/;
      for (const l of k(['conntrack', '-L', '-f', 'ipv6', '-p', 'udp']).split('\n')) {
        const m = line.exec(l);
        if (m) all.set(Number(m[3]), { endpoint: `[${m[5]}]:${m[6]}`, snat: false });
      }
      for (const l of k(['conntrack', '-L', '-f', 'ipv6', '-p', 'udp', '--src-nat']).split('\n')) {
        const m = line.exec(l);
        if (m && all.has(Number(m[3]))) all.get(Number(m[3]))!.snat = true;
      }
      return all;
    };
    const cases: [string, number, number][] = [
      ['fd00:10:96::a', 53, 300], // web's IPv6 half: two IPv6 endpoints, one half each
      ['fd00:10:96::a', 54, 5], // no service on that port
    ];
    let base = 20000;
    for (const [dst, dport, n] of cases) {
      k(['conntrack', '-F', '-f', 'ipv6']);
      send(dst, dport, base, n);
      const seen = flows();
      t.equal(seen.size, n, `[${dst}]:${dport}: one conntrack entry per flow`);
      const pkt = { proto: PROTO_UDP, src: parseIPv6(node)!, dst: parseIPv6(dst)!, sport: base, dport };
      const lv = ev.evaluate6(pkt);
      const cv = compiledVerdict6(t6, pkt);
      t.same(cv, lv, 'tunproxy\'s IPv6 tables and the linear walk give the same verdict');
      const counts = new Map<string, number>();
      for (const [, f] of seen) counts.set(f.endpoint, (counts.get(f.endpoint) ?? 0) + 1);
      if (cv.kind !== 'dnat') {
        t.same([...counts.keys()], [`[${dst}]:${dport}`], `[${dst}]:${dport}: not translated by the kernel either (${cv.kind})`);
      } else {
        t.same([...counts.keys()].sort(), cv.candidates.map((c) => c.endpoint).sort(), `[${dst}]:${dport}: the kernel picks among tunproxy's candidates`);
        for (const c of cv.candidates) {
          const flowsTo = [...seen.values()].filter((f) => f.endpoint === c.endpoint);
          t.ok(flowsTo.every((f) => f.snat === c.masquerade), `${c.endpoint}: masquerade ${c.masquerade} in the kernel too`);
        }
        let chi2 = 0;
        for (const c of cv.candidates) chi2 += ((counts.get(c.endpoint) ?? 0) - c.probability * n) ** 2 / (c.probability * n);
        t.ok(chi2 < 19.51, `the kernel's split ${JSON.stringify([...counts])} fits the probabilities (chi-square ${chi2.toFixed(2)}, df 1)`);
      }
      base += n;
    }
  });
}
