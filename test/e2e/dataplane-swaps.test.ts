/**
 * tunproxy end to end, rule-set changes under traffic: one long-running TCP
 * connection through a ClusterIP survives 100 rule-set swaps (the rules file
 * rewritten and SIGHUP each time) while unrelated services come and go; a
 * rejected file keeps the rules in force; an endpoint removed from the
 * service stops receiving new flows (TCP and UDP) while the established
 * TCP connection to it carries on and a UDP flow pinned to it moves to a
 * remaining endpoint, as with kube-proxy.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RuleSet, Service } from '../../control/types.ts';
import { labDown, labUp } from '../../scripts/lab.ts';
import type { Lab } from '../../scripts/lab.ts';
import { netnsSkipReason } from './helpers.ts';
import { NetClient, TunproxyProcess, tally } from '../../scripts/harness.ts';

const NODE = '172.16.6.1';
const MASQ = '10.64.6.1';
const WEB = '10.32.6.10';
const EPS = ['10.64.6.13', '10.64.6.14', '10.64.6.15'];
const SWAPS = 100;

function web(endpoints: string[]): Service {
  return {
    namespace: 'default',
    name: 'web',
    clusterIP: WEB,
    ports: [
      { name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 },
      { name: 'echo', protocol: 'UDP', port: 7000, targetPort: 7000 },
    ],
    endpoints: endpoints.map((address) => ({ address, nodeLocal: true })),
  };
}

/** Swap i: web unchanged, plus 1..5 unrelated services whose addresses, ports and endpoints change every time. */
function ruleSetFor(i: number, webEndpoints = EPS): RuleSet {
  const churn: Service[] = [];
  for (let k = 0; k <= i % 5; k++) {
    churn.push({
      namespace: 'churn',
      name: `svc-${k}`,
      clusterIP: `10.32.7.${(i * 7 + k) % 250 + 1}`,
      ports: [{ name: 'p', protocol: k % 2 ? 'UDP' : 'TCP', port: 1000 + ((i * 13 + k) % 5000), targetPort: 9000 + k }],
      endpoints: Array.from({ length: 1 + ((i + k) % 4) }, (_, e) => ({ address: `10.64.7.${(i + e * 17 + k) % 250 + 1}` })),
    });
  }
  return {
    apiVersion: 'tunproxy.dev/v1',
    node: { name: 'node-e2e', addresses: [NODE, MASQ], masqueradeAddress: MASQ, clusterCIDR: '10.64.6.0/24' },
    services: [web(webEndpoints), ...churn],
  };
}

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `tunproxy end-to-end tests skipped: ${skip}`);
} else {
  const prefix = `tp-e${process.pid}-sw`;
  const stateDir = mkdtempSync(join(tmpdir(), 'tp-e2e-sw-'));
  const rules = join(stateDir, 'rules.json');
  writeFileSync(rules, JSON.stringify(ruleSetFor(0)));
  let tp: TunproxyProcess | null = null;
  let client: NetClient | null = null;
  t.teardown(async () => {
    try {
      await client?.stop();
      await tp?.stop();
    } finally {
      await labDown(prefix, { stateDir });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  const lab: Lab = await labUp({ prefix, ruleSet: ruleSetFor(0), stateDir });
  tp = await TunproxyProcess.start({ ns: lab.node.ns, tun: lab.tunName, rules });
  client = await NetClient.start(lab.client.ns);
  const c = client;
  let streamEndpoint = '';

  t.test(`a long-running TCP connection survives ${SWAPS} rule-set swaps while unrelated services change`, async (t) => {
    await c.call('stream.start', { name: 'long', to: `${WEB}:80`, intervalMs: 2 });
    await new Promise((r) => setTimeout(r, 200));
    const start = await c.call('stream.status', { name: 'long' });
    t.ok(start.responses > 0, 'the stream is answered before the swaps');
    const gen0 = (await tp!.status()).status.gen;
    t.equal(gen0, 1, 'generation 1 in force at start');
    const generations: number[] = [];
    const progress: number[] = [];
    for (let i = 1; i <= SWAPS; i++) {
      writeFileSync(rules, JSON.stringify(ruleSetFor(i)));
      const r = await tp!.reload();
      if (r.rejected) t.fail(`swap ${i} rejected: ${r.rejected}`);
      generations.push(r.generation);
      if (i % 10 === 0) progress.push((await c.call('stream.status', { name: 'long' })).responses);
    }
    t.same(generations, Array.from({ length: SWAPS }, (_, i) => gen0 + 1 + i), 'each SIGHUP put a new generation in force, in order');
    const { status } = await tp!.status();
    t.equal(status.gen, gen0 + SWAPS, `the status line says gen=${gen0 + SWAPS}`);
    t.ok(progress.every((n, i) => i === 0 || n > progress[i - 1]), `the stream progressed between every 10 swaps (${progress.join(' ')})`);
    await new Promise((r) => setTimeout(r, 100));
    const s = await c.call('stream.status', { name: 'long' });
    t.same(s.errors, [], 'no socket error');
    t.equal(s.closed, false, 'the connection was never closed');
    t.ok(s.requests - s.responses <= 1, `every request but the one in flight answered (${s.responses}/${s.requests})`);
    const eps = Object.keys(s.endpoints);
    t.equal(eps.length, 1, `one connection, one endpoint (${eps.join(', ')})`);
    t.ok(Object.keys(s.clients).every((cl) => cl.startsWith(`${MASQ}:`)), 'masqueraded, one client port');
    t.equal(Object.keys(s.clients).length, 1, 'the same masquerade source port throughout');
    t.same(status.drops, {}, 'no packet dropped');
    streamEndpoint = eps[0].split(':')[0];
  });

  t.test('a rejected rules file keeps the generation in force', async (t) => {
    writeFileSync(rules, '{"apiVersion":"tunproxy.dev/v1","node":{"addresses":["not-an-address"]},"services":[]}');
    const r = await tp!.reload();
    t.ok(r.rejected, 'rejected');
    t.match(r.rejected, /addresses/, `the reason names the field: ${r.rejected}`);
    t.equal(r.generation, 1 + SWAPS, 'the previous generation stays in force');
    const h: Array<Record<string, any>> = await c.call('http', { url: `http://${WEB}/`, count: 3 });
    t.ok(h.every((x) => x.status === 200), 'the service still answers');
  });

  t.test('an endpoint removed from the service gets no new flows; its established connection carries on', async (t) => {
    t.ok(streamEndpoint, 'the long connection\'s endpoint is known');
    const remaining = EPS.filter((e) => e !== streamEndpoint);
    const before: Array<Record<string, any>> = await c.call('http', { url: `http://${WEB}/`, count: 30 });
    t.ok(tally(before)[`${streamEndpoint}:8080`] > 0, `before: ${streamEndpoint} takes new flows (${JSON.stringify(tally(before))})`);
    // a UDP flow (one 5-tuple: a fixed source port) that the dataplane sent to the endpoint about to leave
    let pinned = 0;
    for (let sport = 41000; sport < 41060 && !pinned; sport++) {
      const [first] = await c.call('udp', { to: `${WEB}:7000`, sport });
      if (first.endpoint === `${streamEndpoint}:7000`) pinned = sport;
    }
    t.ok(pinned, `a UDP flow from source port ${pinned} goes to ${streamEndpoint}`);
    const again: Array<Record<string, any>> = await c.call('udp', { to: `${WEB}:7000`, sport: pinned, count: 3 });
    t.same(Object.keys(tally(again)), [`${streamEndpoint}:7000`], 'and stays there (one conntrack entry)');

    writeFileSync(rules, JSON.stringify(ruleSetFor(SWAPS + 1, remaining)));
    const r = await tp!.reload();
    t.equal(r.rejected, null, `endpoint ${streamEndpoint} removed: generation ${r.generation}`);
    const mid = await c.call('stream.status', { name: 'long' });

    const h: Array<Record<string, any>> = await c.call('http', { url: `http://${WEB}/`, count: 30 });
    t.same(h.filter((x) => x.status !== 200), [], 'new HTTP flows all answered');
    t.same(Object.keys(tally(h)).sort(), remaining.map((e) => `${e}:8080`), `new TCP flows only reach the remaining endpoints (${JSON.stringify(tally(h))})`);
    const u: Array<Record<string, any>> = await c.call('udp', { to: `${WEB}:7000`, count: 30 });
    t.same(u.filter((x) => x.error), [], 'new UDP flows all answered');
    t.same(Object.keys(tally(u)).sort(), remaining.map((e) => `${e}:7000`), 'new UDP flows only reach the remaining endpoints');

    const stale: Array<Record<string, any>> = await c.call('udp', { to: `${WEB}:7000`, sport: pinned, count: 3 });
    t.same(stale.filter((x) => x.error), [], 'the pinned UDP flow is still answered');
    t.equal(Object.keys(tally(stale)).length, 1, 'by one endpoint');
    t.not(stale[0].endpoint, `${streamEndpoint}:7000`, `its stale conntrack entry was removed: it moved to ${stale[0].endpoint} (kube-proxy clears UDP entries of a removed endpoint)`);

    await new Promise((r) => setTimeout(r, 150));
    const end = await c.call('stream.stop', { name: 'long' });
    t.ok(end.responses > mid.responses, `the established connection to the removed endpoint still carries requests (${mid.responses} -> ${end.responses}), as kube-proxy leaves established TCP flows`);
    t.same(Object.keys(end.endpoints), [`${streamEndpoint}:8080`], 'still to the same endpoint');
    t.same(end.errors, [], 'without an error');
  });

  t.test('stopped cleanly', async (t) => {
    const final = await tp!.stop();
    t.equal((await tp!.exited).code, 0, 'exit status 0');
    t.equal(final?.gen, SWAPS + 2, 'final generation');
    t.same(final?.drops, {}, 'no drop during the whole run');
  });
}
