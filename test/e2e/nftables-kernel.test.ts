/**
 * The kernel judges the nftables writer: `nft -c -f` accepts the full
 * transaction, it loads, the add-one-service transaction loads on top of it,
 * and the service-ips map then holds every ClusterIP. A namespace of its own
 * (tp-nft<pid>), removed at the end, also on failure.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { syntheticRuleSet } from '../../bench/gen.ts';
import { writeNftables, writeNftablesServiceAdd } from '../../control/nftables/writer.ts';

const NS = `tp-nft${process.pid}`;

function run(cmd: string[], input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd[0], cmd.slice(1), { input, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (CAP_NET_ADMIN) for a network namespace and nft';
  for (const tool of ['ip', 'nft']) if (run(['sh', '-c', `command -v ${tool}`]).code !== 0) return `${tool} is not installed`;
  return null;
}

const reason = skipReason();
if (reason) {
  t.test('nftables in the kernel', { skip: reason }, async () => {});
} else {
  const inNs = (cmd: string[], input?: string) => run(['ip', 'netns', 'exec', NS, ...cmd], input);
  run(['ip', 'netns', 'del', NS]);
  t.equal(run(['ip', 'netns', 'add', NS]).code, 0, 'namespace created');
  t.teardown(() => void run(['ip', 'netns', 'del', NS]));

  t.test('200 services: checked, loaded, one added with nft add element', async (t) => {
    const full = syntheticRuleSet(201, { endpoints: 3, protocol: 'UDP', port: 53, targetPort: 5353, pods: 6 });
    const rs = { ...full, services: full.services.slice(0, 200) };
    rs.services[7] = { ...rs.services[7], sessionAffinity: 'ClientIP' };
    rs.services[9] = { ...rs.services[9], endpoints: [] };
    const text = writeNftables(rs);
    const c = inNs(['nft', '-c', '-f', '-'], text);
    t.equal(c.code, 0, `nft -c accepts the transaction ${c.stderr}`);
    const l = inNs(['nft', '-f', '-'], text);
    t.equal(l.code, 0, `nft -f loads it ${l.stderr}`);
    const again = inNs(['nft', '-f', '-'], text);
    t.equal(again.code, 0, `a second full sync over the loaded table works too ${again.stderr}`);
    const add = inNs(['nft', '-f', '-'], writeNftablesServiceAdd(rs, full.services[200]));
    t.equal(add.code, 0, `the add-one-service transaction loads ${add.stderr}`);
    const map = inNs(['nft', 'list', 'map', 'ip', 'kube-proxy', 'service-ips']);
    t.equal(map.code, 0);
    const elements = map.stdout.match(/ : goto service-/g) ?? [];
    t.equal(elements.length, 200, '199 services with endpoints + the added one');
    t.match(map.stdout, new RegExp(`${full.services[200].clusterIP!.replaceAll('.', '\\.')} \\. udp \\. 53 : goto service-\\S+-ns-2/svc-200/udp/p`));
    const noEp = inNs(['nft', 'list', 'map', 'ip', 'kube-proxy', 'no-endpoint-services']);
    t.match(noEp.stdout, /10\.96\.0\.19 \. udp \. 53 comment "ns-0\/svc-9:p" : goto reject-chain/);
    const chains = inNs(['nft', 'list', 'chains', 'ip']).stdout.match(/chain endpoint-/g) ?? [];
    t.equal(chains.length, 199 * 3 + 3, 'one endpoint chain per endpoint');
  });
}
