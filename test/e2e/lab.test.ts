/**
 * The lab's wiring, without tunproxy: namespaces, addresses, the pod servers,
 * and the routes and rules that send service, NodePort and pod traffic into
 * the TUN. A TUN agent in the node namespace stands in for the dataplane: it
 * shows which packets arrive, and the NAT is done here by hand to prove that a
 * translated packet written back reaches the pod and the reply the client.
 */
import t from 'tap';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { run } from '../../scripts/ns.ts';
import type { ExecResult } from '../../scripts/ns.ts';
import {
  ROOT,
  TunAgent,
  hex,
  ip,
  listNetns,
  netnsSkipReason,
  nsRun,
  parsePacket,
  pidAlive,
  probe,
  rewritePacket,
  testPrefix,
  udpListener,
  unhex,
} from './helpers.ts';

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `lab end-to-end tests skipped: ${skip}`);
} else {
  const NODE = '192.168.77.1';
  const MASQ = '10.64.1.1';
  const CLUSTER_IP = '10.96.0.10';
  const EP1 = '10.64.1.13';
  const EP2 = '10.64.1.14';
  const ruleSet: RuleSet = {
    apiVersion: 'tunproxy.dev/v1',
    node: { name: 'node-1', addresses: [NODE, MASQ], clusterCIDR: '10.64.0.0/16' },
    services: [
      {
        namespace: 'default',
        name: 'web',
        clusterIP: CLUSTER_IP,
        ports: [
          { name: 'http', protocol: 'TCP', port: 80, nodePort: 30080 },
          { name: 'dns', protocol: 'UDP', port: 53, nodePort: 30053 },
        ],
        endpoints: [{ address: EP1 }, { address: EP2 }],
      },
    ],
  };
  const prefix = testPrefix('lab');
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-lab-state-'));
  t.teardown(async () => {
    await labDown(prefix, { stateDir });
    rmSync(stateDir, { recursive: true, force: true });
  });
  const rootLinksBefore = ip(['-br', 'link']);
  const rootRulesBefore = ip(['rule']);

  // labUp twice: the second replaces the first (idempotent), stopping its servers
  const first = await labUp({ prefix, ruleSet, stateDir, podServers: true });
  const lab: Lab = await labUp({ prefix, ruleSet, stateDir, clientPod: true });
  const client = lab.client.ns;
  const node = lab.node.ns;

  t.test('labUp builds the namespaces from the rule set and touches nothing in the root namespace', async (t) => {
    t.same(listNetns(`${prefix}-`), [...lab.namespaces].sort(), 'exactly the lab namespaces exist');
    t.same(
      lab.namespaces,
      [`${prefix}-client`, `${prefix}-node`, `${prefix}-pod-10-64-1-13`, `${prefix}-pod-10-64-1-14`, `${prefix}-cpod`],
      'client, node, one namespace per endpoint address, client pod',
    );
    t.same(lab.pods.map((p) => p.address), [EP1, EP2]);
    t.same(lab.pods[0].listens, [
      { protocol: 'TCP', port: 80, kind: 'http' },
      { protocol: 'UDP', port: 53, kind: 'dns' },
    ]);
    t.equal(lab.client.address, '192.168.77.2');
    t.equal(lab.node.masqueradeAddress, MASQ);
    t.equal(lab.clientPod?.address, '10.64.1.250');
    t.same(lab.node.serviceRoutes, [`${CLUSTER_IP}/32`]);
    t.equal(ip(['-br', 'link']), rootLinksBefore, 'root namespace links unchanged');
    t.equal(ip(['rule']), rootRulesBefore, 'root namespace rules unchanged');

    const tun = ip(['-n', node, '-d', 'link', 'show', 'tun0']);
    t.match(tun, /mtu 1500/);
    t.match(tun, /tun type tun pi off/, 'a persistent TUN without packet info');
    t.match(ip(['-n', node, 'route', 'show', CLUSTER_IP]), /dev tun0/, 'the ClusterIP is routed into the TUN');
    const rules = ip(['-n', node, 'rule']);
    t.match(rules, /^100:\s+from all lookup local/m, 'local table moved to pref 100');
    t.notMatch(rules, /^0:/m, 'no rule at pref 0');
    t.match(rules, /^50:\s+from all to 192\.168\.77\.1 ipproto udp dport 30000-32767 lookup 100/m, 'NodePorts into the TUN');
    t.match(rules, /^60:\s+from all iif vp0 goto 70/m, 'one rule per pod');
    t.match(rules, /^70:\s+from all ipproto tcp lookup 100/m, 'the pods\' TCP into the TUN');
    t.equal(rules.trim().split('\n').length, 15 + 3, 'a fixed number of rules plus one per pod (two pods, the client pod)');
    t.match(ip(['-n', node, 'route', 'show', 'table', '100']), /default dev tun0/);
    t.equal(nsRun(node, ['sysctl', '-n', 'net.ipv4.ip_forward']).trim(), '1');
    t.equal(nsRun(node, ['sysctl', '-n', 'net.ipv4.conf.tun0.accept_local']).trim(), '1');
    t.match(ip(['-n', lab.pods[0].ns, 'route']), /default via 10\.64\.1\.1 dev eth0/);
    t.match(ip(['-n', client, 'route']), /default via 192\.168\.77\.1 dev eth0/);

    t.equal(lab.serverPids.length, 2, 'two pod servers');
    t.ok(lab.serverPids.every(pidAlive), 'the pod servers run');
    t.ok(first.serverPids.every((pid) => !pidAlive(pid)), 'the first lab\'s pod servers were stopped by the second labUp');
  });

  t.test('the pod servers answer from the node namespace with their own address', async (t) => {
    for (const ep of [EP1, EP2]) {
      const r = await probe(node, ['http', '--url', `http://${ep}/`]);
      t.equal(r.status, 200);
      const body = JSON.parse(r.body);
      t.equal(body.endpoint, `${ep}:80`);
      t.match(body.client, /^192\.168\.77\.1:\d+$/, 'the node talks to its pods from its own address');
      const d = await probe(node, ['dns', '--server', `${ep}:53`, '--name', 'web.default.svc']);
      t.equal(d.from, `${ep}:53`);
      t.equal(d.rcode, 0);
      t.same(d.answers, [ep], 'the DNS responder answers with its own address');
    }
  });

  t.test('through the TUN: ClusterIP, NodePort, pod traffic, each translated by hand', async (t) => {
    const agent = await TunAgent.start(node);
    t.teardown(() => agent.stop());
    await agent.call('open', { name: 'tun0' });

    // client -> ClusterIP:53 arrives in the TUN; DNAT to EP1 with masquerade, reply un-NATed
    const query = probe(client, ['dns', '--server', `${CLUSTER_IP}:53`, '--name', 'web', '--wait', '5000']);
    const inbound = await agent.call('read', { min: 1 });
    t.equal(inbound.packets.length, 1, 'the client\'s packet to the ClusterIP is in the TUN');
    const q = parsePacket(unhex(inbound.packets[0]));
    t.same([q.protocol, q.src, q.dst, q.dstPort], [17, '192.168.77.2', CLUSTER_IP, 53]);
    await agent.call('write', { packets: [hex(rewritePacket(unhex(inbound.packets[0]), { src: MASQ, dst: EP1 }))] });
    const back = await agent.call('read', { min: 1 });
    t.equal(back.packets.length, 1, 'the pod\'s reply to the masquerade address comes back through the TUN');
    const rp = parsePacket(unhex(back.packets[0]));
    t.same([rp.src, rp.srcPort, rp.dst, rp.dstPort], [EP1, 53, MASQ, q.srcPort]);
    await agent.call('write', { packets: [hex(rewritePacket(unhex(back.packets[0]), { src: CLUSTER_IP, dst: '192.168.77.2' }))] });
    const answer = await query;
    t.equal(answer.from, `${CLUSTER_IP}:53`, 'the client got its answer from the ClusterIP');
    t.same(answer.answers, [EP1], 'answered by the endpoint the packet was sent to');

    // client -> node:NodePort (UDP) goes into the TUN by policy routing; DNAT to EP2
    const np = probe(client, ['dns', '--server', `${NODE}:30053`, '--name', 'web', '--wait', '5000']);
    const npIn = await agent.call('read', { min: 1 });
    const n = parsePacket(unhex(npIn.packets[0]));
    t.same([n.protocol, n.src, n.dst, n.dstPort], [17, '192.168.77.2', NODE, 30053], 'the NodePort packet is in the TUN');
    await agent.call('write', { packets: [hex(rewritePacket(unhex(npIn.packets[0]), { src: MASQ, dst: EP2, dstPort: 53 }))] });
    const npBack = await agent.call('read', { min: 1 });
    t.same(parsePacket(unhex(npBack.packets[0])).src, EP2);
    await agent.call('write', {
      packets: [hex(rewritePacket(unhex(npBack.packets[0]), { src: NODE, srcPort: 30053, dst: '192.168.77.2' }))],
    });
    const npAnswer = await np;
    t.equal(npAnswer.from, `${NODE}:30053`);
    t.same(npAnswer.answers, [EP2]);

    // a TCP SYN to a NodePort, too
    const syn = probe(client, ['tcp', '--to', `${NODE}:30080`, '--wait', '500']);
    const synIn = await agent.call('read', { min: 1 });
    const s = parsePacket(unhex(synIn.packets[0]));
    t.same([s.protocol, s.dst, s.dstPort, s.tcpFlags & 0x12], [6, NODE, 30080, 0x02], 'the SYN to the NodePort is in the TUN');
    await syn;

    // a port outside the NodePort range on the node address stays local: nothing in the TUN
    await probe(client, ['udp', '--to', `${NODE}:5000`, '--expect', '0']);
    t.equal((await agent.call('readOnce', {})).count, 0, 'no TUN packet for node:5000');

    // a pod -> node:NodePort goes into the TUN too
    await probe(lab.pods[1].ns, ['udp', '--to', `${NODE}:30053`, '--expect', '0']);
    const pn = parsePacket(unhex((await agent.call('read', { min: 1 })).packets[0]));
    t.same([pn.src, pn.dst, pn.dstPort], [EP2, NODE, 30053], 'pod -> NodePort is in the TUN');

    // the client pod -> ClusterIP: into the TUN with the pod's own source
    await probe(lab.clientPod!.ns, ['udp', '--to', `${CLUSTER_IP}:53`, '--expect', '0']);
    const cp = await agent.call('read', { min: 1 });
    const c = parsePacket(unhex(cp.packets[0]));
    t.same([c.src, c.dst, c.dstPort], ['10.64.1.250', CLUSTER_IP, 53], 'pod -> ClusterIP keeps the pod source');

    // non-service traffic from a pod also passes the TUN; written back unchanged, it reaches its destination
    const listener = udpListener(client, 9999);
    await listener.listening;
    await probe(lab.pods[0].ns, ['udp', '--to', '192.168.77.2:9999', '--data', 'direct', '--expect', '0', '--sport', '4444']);
    const direct = await agent.call('read', { min: 1 });
    const d = parsePacket(unhex(direct.packets[0]));
    t.same([d.src, d.dst, d.dstPort], [EP1, '192.168.77.2', 9999], 'pod -> client is in the TUN');
    await agent.call('write', { packets: direct.packets });
    t.same(await listener.result, { from: `${EP1}:4444`, text: 'direct' }, 'passed through unchanged, the client receives it');
  });

  t.test('labDown removes every namespace and stops the pod servers', async (t) => {
    const pids = lab.serverPids;
    const r = await lab.down();
    t.same(r.stopped.sort(), [...pids].sort(), 'stopped exactly the pod servers');
    t.same(listNetns(`${prefix}-`), [], 'no namespace with the prefix is left');
    t.ok(pids.every((pid) => !pidAlive(pid)), 'no pod server is left');
    t.notOk(existsSync(join(stateDir, `${prefix}.json`)), 'state file removed');
    const again = await labDown(prefix, { stateDir });
    t.same(again, { namespaces: [], stopped: [], others: [] }, 'a second labDown is a no-op');
  });

  t.test('the netns-up / netns-down commands', async (t) => {
    const cli = testPrefix('cli');
    const rules = join(stateDir, 'rules.json');
    writeFileSync(rules, JSON.stringify(ruleSet));
    const tsx = (script: string, args: string[]): ExecResult =>
      run([process.execPath, '--import', 'tsx', join(ROOT, 'scripts', script), ...args, '--state-dir', stateDir], { allowFail: true });
    t.teardown(() => labDown(cli, { stateDir }));
    const up = tsx('netns-up.ts', ['--prefix', cli, '--rules', rules, '--no-servers', '--tun', 'tp0']);
    t.equal(up.code, 0, up.stderr);
    const shown = JSON.parse(up.stdout);
    t.equal(shown.tunName, 'tp0');
    t.same(shown.serverPids, []);
    t.same(listNetns(`${cli}-`), [...shown.namespaces].sort(), 'the namespaces it printed exist');
    const down = tsx('netns-down.ts', ['--prefix', cli]);
    t.equal(down.code, 0, down.stderr);
    t.match(down.stdout, new RegExp(`${cli}: deleted 4 namespace\\(s\\)`));
    t.same(listNetns(`${cli}-`), []);
    const bad = tsx('netns-up.ts', ['--prefix', cli, '--rules', join(stateDir, 'missing.json')]);
    t.equal(bad.code, 1);
    t.match(bad.stderr, /netns-up: cannot read the rule set .*missing\.json: ENOENT/);
  });

  t.test('a lab that fails while building is removed again', async (t) => {
    const bad: RuleSet = structuredClone(ruleSet);
    bad.services[0].endpoints = [{ address: EP1, ports: { http: 80, dns: 70000 } }];
    await t.rejects(labUp({ prefix, ruleSet: bad, stateDir }), /lab tp-t\d+-lab: building failed and everything was removed again: pod server 10\.64\.1\.13 .*stopped/);
    t.same(listNetns(`${prefix}-`), [], 'nothing left behind');
    await t.rejects(labUp({ prefix, ruleSet: { ...ruleSet, node: { addresses: ['192.168.77'] } }, stateDir }), /node address "192\.168\.77" is not an IPv4 address/);
    await t.rejects(labUp({ prefix: 'lab', ruleSet, stateDir }), /must start with "tp-"/);
  });
}
