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

const NS = `tp-ip6t${process.pid}`;

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
  const cleanup = () => void run(['ip', 'netns', 'del', NS]);
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
}
