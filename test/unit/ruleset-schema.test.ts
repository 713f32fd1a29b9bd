import t from 'tap';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import fc from 'fast-check';
import { ruleSetSchema } from '../../control/schema.ts';
import { validateRuleSet } from '../../control/validate.ts';

// fastify's own validator (ajv), as the API uses it
const require = createRequire(import.meta.url);
const Ajv = require('ajv');
const addFormats = require('ajv-formats');

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
const schemaValid = ajv.compile(ruleSetSchema);
const demo = JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8'));

t.test('the demo rule set satisfies the schema and the validator', async (t) => {
  t.ok(schemaValid(demo), JSON.stringify(schemaValid.errors));
  t.ok(validateRuleSet(demo).ok);
});

t.test('schema and validator agree on rejecting unknown fields and bad enums', async (t) => {
  const bad = [
    { ...demo, extra: 1 },
    { ...demo, node: { ...demo.node, color: 'red' } },
    { ...demo, services: [{ ...demo.services[0], ports: [{ ...demo.services[0].ports[0], protocol: 'ICMP' }] }] },
    { ...demo, services: [{ ...demo.services[0], sessionAffinity: 'Cookie' }] },
    { ...demo, services: [{ ...demo.services[0], endpoints: [{ address: '10.0.0.1', weight: 3 }] }] },
    { ...demo, apiVersion: 'v1' },
  ];
  for (const b of bad) {
    t.notOk(schemaValid(b), 'schema rejects');
    t.notOk(validateRuleSet(b).ok, 'validator rejects');
  }
});

t.test('whatever the schema rejects, the validator rejects too (random mutations)', async () => {
  const fields = ['apiVersion', 'node', 'services', 'addresses', 'clusterIP', 'ports', 'port', 'protocol', 'endpoints', 'address', 'ready'];
  const values = fc.oneof(fc.constant(null), fc.integer({ min: -5, max: 70000 }), fc.string({ maxLength: 6 }), fc.boolean(), fc.constant([]), fc.constant({}));
  fc.assert(
    fc.property(fc.constantFrom(...fields), values, fc.nat(3), (field, value, depth) => {
      const rs = structuredClone(demo);
      const targets: any[] = [rs, rs.node, rs.services[depth % rs.services.length], rs.services[0].ports[0], rs.services[0].endpoints[0]];
      targets[depth % targets.length][field] = value;
      if (!schemaValid(rs)) return !validateRuleSet(rs).ok;
      return true;
    }),
    { numRuns: 500, seed: 11 },
  );
});

t.test('a PUT body has no schema pass: whatever the schema rejects, the validator rejects (random JSON anywhere)', async (t) => {
  let refused = 0;
  // every field of every level, any JSON value (fc.jsonValue: nested objects and arrays too)
  const fields = [
    'apiVersion', 'node', 'services', 'name', 'addresses', 'masqueradeAddress', 'clusterCIDR', 'masqueradeAll', 'masqueradeMark', 'nodePortRange', 'loadBalancing', 'maglevTableSize',
    'namespace', 'clusterIP', 'ports', 'externalIPs', 'loadBalancerIPs', 'loadBalancerSourceRanges', 'sessionAffinity', 'sessionAffinityTimeoutSeconds', 'externalTrafficPolicy', 'internalTrafficPolicy', 'endpoints',
    'protocol', 'port', 'nodePort', 'targetPort', 'address', 'ready', 'serving', 'terminating', 'nodeLocal', 'unknown',
  ];
  fc.assert(
    fc.property(fc.constantFrom(...fields), fc.jsonValue({ maxDepth: 2 }), fc.nat(), (field, value, where) => {
      const rs = structuredClone(demo);
      const s = rs.services[where % rs.services.length];
      const targets: any[] = [rs, rs.node, s, s.ports[where % s.ports.length], ...(s.endpoints ?? []).slice(0, 1), ...(s.endpoints?.[0]?.ports ? [s.endpoints[0].ports] : [])];
      targets[where % targets.length][field] = value;
      if (schemaValid(rs)) return true;
      refused++;
      return !validateRuleSet(rs).ok;
    }),
    { numRuns: 3000, seed: 12 },
  );
  t.ok(refused > 1000, `the schema refused ${refused} of 3000 mutated rule sets, and the validator each of them`);
});
