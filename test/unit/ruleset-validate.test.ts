import t from 'tap';
import { readFileSync } from 'node:fs';
import { validateRuleSet, parseRuleSet, RuleSetError } from '../../control/validate.ts';
import type { RuleSet } from '../../control/types.ts';

const demo = (): RuleSet => JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));

function errorsOf(rs: unknown): string[] {
  const r = validateRuleSet(rs);
  return r.ok ? [] : r.errors.map((e) => `${e.path}: ${e.message}`);
}

t.test('the demo rule set is valid', async (t) => {
  t.same(errorsOf(demo()), []);
});

t.test('errors name the path and the reason', async (t) => {
  const rs = demo();
  rs.services[1].ports[0].nodePort = 70000;
  t.same(errorsOf(rs), ['services[1].ports[0].nodePort: 70000 is outside 1-65535']);
  rs.services[1].ports[0].nodePort = 29999;
  t.same(errorsOf(rs), ['services[1].ports[0].nodePort: 29999 is outside 30000-32767']);
});

t.test('every error is reported, not just the first', async (t) => {
  const rs = demo() as any;
  rs.apiVersion = 'v0';
  rs.node.addresses = ['300.1.1.1'];
  rs.services[0].ports[0].protocol = 'ICMP';
  rs.services[0].endpoints[0].address = 'fd00::1';
  rs.services[2].bogus = 1;
  const errs = errorsOf(rs);
  t.match(errs, [
    /^apiVersion: "v0" is not supported/,
    /^node\.addresses\[0\]: "300\.1\.1\.1" is not an IPv4 address/,
    /^services\[0\]\.ports\[0\]\.protocol: "ICMP" is not one of TCP, UDP, SCTP/,
    /^services\[0\]\.endpoints\[0\]\.address: fd00::1 is IPv6, but the service's IP families are \[IPv4\]/,
    /^services\[2\]\.bogus: unknown field/,
  ]);
  t.equal(errs.length, 5);
});

t.test('conflicts are refused instead of one winning silently', async (t) => {
  const rs = demo();
  rs.services.push({
    namespace: 'default', name: 'dup', clusterIP: '10.32.0.10',
    ports: [{ name: 'x', protocol: 'UDP', port: 53, nodePort: 30080 }, { name: 'y', protocol: 'TCP', port: 30080, nodePort: 30080 }],
  });
  const errs = errorsOf(rs);
  t.match(errs, [
    /^services\[3\]\.ports\[0\]: 10\.32\.0\.10:53\/UDP \(cluster IP\) is already used by services\[0\]\.ports\[0\] \(kube-system\/kube-dns:dns cluster IP\)/,
    /^services\[3\]\.ports\[1\]\.nodePort: 30080\/TCP is already the NodePort of services\[1\]\.ports\[0\]/,
  ]);
  // the same NodePort number on UDP is no conflict
  rs.services[3].ports = [{ name: 'x', protocol: 'UDP', port: 54, nodePort: 30080 }];
  t.same(errorsOf(rs), []);
  // an external IP colliding with another service's ClusterIP:port is a conflict too
  rs.services[3].externalIPs = ['10.32.0.159'];
  rs.services[3].ports = [{ name: 'x', protocol: 'TCP', port: 8080 }];
  t.match(errorsOf(rs), [/10\.32\.0\.159:8080\/TCP \(external IP\) is already used by services\[1\]/]);
});

t.test('duplicate services, ports and endpoints', async (t) => {
  const rs = demo();
  rs.services.push(JSON.parse(JSON.stringify(rs.services[2])));
  rs.services[3].clusterIP = '10.32.0.201';
  rs.services[0].endpoints!.push({ address: '10.64.1.7' });
  rs.services[0].ports[1].name = 'dns';
  const errs = errorsOf(rs);
  t.ok(errs.some((e) => e === 'services[3]: service default/empty-svc is already defined by services[2]'), errs.join('\n'));
  t.ok(errs.some((e) => e === 'services[0].ports[1].name: port name "dns" is used twice in kube-system/kube-dns'));
  t.ok(errs.some((e) => e === 'services[0].endpoints[2].address: 10.64.1.7 is listed twice in kube-system/kube-dns'));
});

t.test('duplicates past the few a service usually has (the small sets turn into Sets at 16), and nothing carried from one service to the next', async (t) => {
  const rs = demo();
  const eps = Array.from({ length: 40 }, (_, i) => ({ address: `10.64.9.${i + 1}` }));
  // the 30th repeats the 3rd, the 40th the 20th: both past the 16 an array holds
  eps[29] = { address: '10.64.9.3' };
  eps[39] = { address: '10.64.9.20' };
  rs.services[1].endpoints = eps;
  const ports = Array.from({ length: 20 }, (_, i) => ({ name: `p${i}`, protocol: 'TCP' as const, port: 1000 + i }));
  ports[18] = { name: 'p17', protocol: 'TCP', port: 2018 };
  rs.services[1].ports = ports;
  const errs = errorsOf(rs);
  t.same(errs.filter((e) => e.startsWith('services[1].')), [
    'services[1].ports[18].name: port name "p17" is used twice in default/web-svc',
    'services[1].endpoints[29].address: 10.64.9.3 is listed twice in default/web-svc',
    'services[1].endpoints[39].address: 10.64.9.20 is listed twice in default/web-svc',
  ]);
  // the next services have endpoints and ports of the same names and addresses: not duplicates of services[1]'s
  const rs2 = demo();
  rs2.services[1].endpoints = eps.slice(0, 20);
  rs2.services[2].endpoints = eps.slice(0, 20);
  rs2.services[2].ports = ports.slice(0, 17);
  t.same(errorsOf(rs2), [], 'the same endpoints and port names in two services are no error');
});

t.test('endpoint ports must name service ports; named targetPorts need them', async (t) => {
  const rs = demo();
  rs.services[1].endpoints![0].ports = { 'nginx-svc-port': 80, nope: 1 };
  t.same(errorsOf(rs), ['services[1].endpoints[0].ports.nope: default/web-svc has no port named "nope"']);
  const rs2 = demo();
  rs2.services[1].ports[0].targetPort = 'http';
  t.equal(errorsOf(rs2).length, 5, 'one per endpoint, of both families');
  t.match(errorsOf(rs2)[0], /services\[1\]\.endpoints\[0\]\.ports: is required: services\[1\]\.ports\[0\] has the named targetPort "http"/);
});

t.test('node settings', async (t) => {
  const rs = demo() as any;
  rs.node.masqueradeMark = '0x4001';
  rs.node.nodePortRange = '40000-30000';
  rs.node.loadBalancing = 'maglev';
  rs.node.maglevTableSize = 1000;
  rs.node.clusterCIDR = '10.64.1.0/40';
  t.same(errorsOf(rs), [
    'node.clusterCIDR: "10.64.1.0/40" is not an IPv4 CIDR (like 10.64.0.0/16)',
    'node.masqueradeMark: "0x4001" must be one bit as hex, like "0x4000"',
    'node.nodePortRange: "40000-30000" must be "LOW-HIGH" within 1-65535',
    'node.maglevTableSize: 1000 is not a prime (Maglev needs a prime table size, e.g. 65537)',
  ]);
});

t.test('non-objects and missing fields', async (t) => {
  t.same(errorsOf(null), ['(root): a rule set must be a JSON object, got null']);
  t.same(errorsOf({ apiVersion: 'tunproxy.dev/v1' }), ['node: is required', 'services: is required']);
  t.same(errorsOf({ apiVersion: 'tunproxy.dev/v1', node: { addresses: [] }, services: [{ namespace: 'a', name: 'b', ports: [] }] }), [
    'node.addresses: must list at least one address (what -m addrtype --dst-type LOCAL matches)',
    'services[0].ports: must be a non-empty array',
  ]);
});

t.test('parseRuleSet throws a RuleSetError carrying every error', async (t) => {
  const rs = demo();
  rs.services[0].ports[0].port = 0;
  const err = (() => { try { parseRuleSet(rs); } catch (e) { return e; } })();
  t.ok(err instanceof RuleSetError);
  t.same((err as RuleSetError).errors, [{ path: 'services[0].ports[0].port', message: '0 is outside 1-65535' }]);
  t.match((err as Error).message, /rule set rejected \(1 error\):\n  services\[0\]\.ports\[0\]\.port: 0 is outside 1-65535/);
});
