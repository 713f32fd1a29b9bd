/**
 * Traffic from the node itself (hostNetwork pods, the kubelet), which
 * kube-proxy serves from its nat OUTPUT chain: a process in the node
 * namespace reaching a ClusterIP and a NodePort on the node's own address is
 * served by tunproxy too (the lab routes both into the TUN), masqueraded as
 * kube-proxy masquerades it (a node address is outside the cluster CIDR; a
 * NodePort's traffic is always masqueraded). A NodePort on 127.0.0.1 is not
 * served (kube-proxy's localhost NodePorts need route_localnet; tunproxy, like
 * kube-proxy's nftables mode, does not serve them): the connection is refused
 * by the node's own stack, nothing reaches a pod.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { netnsSkipReason } from './helpers.ts';
import { NetClient, TunproxyProcess, tally } from '../../scripts/harness.ts';

const NODE = '172.16.6.1';
const MASQ = '10.64.6.1';
const WEB = '10.32.6.10';
const EPS = ['10.64.6.13', '10.64.6.14'];

const ruleSet: RuleSet = {
  apiVersion: 'tunproxy.dev/v1',
  node: { name: 'node-local-e2e', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.6.0/24' },
  services: [
    {
      namespace: 'default',
      name: 'web',
      clusterIP: WEB,
      ports: [
        { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 },
        { name: 'echo', protocol: 'UDP', port: 7000, targetPort: 7000, nodePort: 30700 },
      ],
      endpoints: EPS.map((address) => ({ address, nodeLocal: true })),
    },
  ],
};

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `node-local traffic end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-nl`;
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-e2e-nl-'));
  const rules = join(stateDir, 'rules.json');
  writeFileSync(rules, JSON.stringify(ruleSet, null, 2));
  let tp: TunproxyProcess | null = null;
  let node: NetClient | null = null;
  t.teardown(async () => {
    try {
      await node?.stop();
      await tp?.stop();
    } finally {
      await labDown(prefix, { stateDir });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  const lab: Lab = await labUp({ prefix, ruleSet, stateDir });
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules });
  node = await NetClient.start(lab.node.ns); // a process on the node itself
  const nodeClient = node;

  t.test('from the node to a ClusterIP: served, masqueraded (a node address is outside the cluster CIDR)', async (t) => {
    const r: Array<Record<string, any>> = await nodeClient.call('http', { url: `http://${WEB}/`, count: 20 });
    t.same(r.filter((x) => x.status !== 200), [], 'all 20 requests answered 200');
    t.same(Object.keys(tally(r)).sort(), EPS.map((e) => `${e}:8080`), 'both endpoints answered');
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), `the pods saw the masquerade address ${MASQ}`);
    const u: Array<Record<string, any>> = await nodeClient.call('udp', { to: `${WEB}:7000`, count: 6, data: 'node' });
    t.same(u.filter((x) => x.error), [], 'UDP answered');
    t.ok(u.every((x) => x.from === `${WEB}:7000`), 'replies un-NATed to the ClusterIP');
  });

  t.test("from the node to a NodePort on the node's own address: served, masqueraded", async (t) => {
    const r: Array<Record<string, any>> = await nodeClient.call('http', { url: `http://${NODE}:30080/`, count: 10 });
    t.same(r.filter((x) => x.status !== 200), [], 'answered');
    t.ok(r.every((x) => String(x.client).startsWith(`${MASQ}:`)), 'masqueraded');
  });

  t.test('from the node to a NodePort on 127.0.0.1: not served (no route_localnet NodePorts), refused by the node itself', async (t) => {
    const before = (await tp!.status()).status;
    const r = await nodeClient.call('tcp', { to: '127.0.0.1:30080' });
    t.same(r, { error: 'ECONNREFUSED' }, 'refused: nothing listens on the node, tunproxy never sees it');
    const after = (await tp!.status()).status;
    t.equal(after.newFlows, before.newFlows, 'no flow was created in tunproxy');
  });
}
