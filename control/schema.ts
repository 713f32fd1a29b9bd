/**
 * The rule set's JSON schema (draft-07), served by the API (GET
 * /v1/ruleset/schema) and used by fastify for the service routes' bodies; a
 * PUT /v1/ruleset body goes to the validator alone, which refuses all the
 * schema refuses (test/unit/ruleset-schema.test.ts). control/validate.ts checks the same shape
 * plus what a schema cannot say (conflicts, ranges that depend on the node,
 * endpoint ports naming service ports) and words each error for a person.
 */
import { API_VERSION } from './types.ts';

const ipv4 = { type: 'string', format: 'ipv4', description: 'IPv4 address in dotted-quad form' } as const;
const ipv6 = { type: 'string', format: 'ipv6', description: 'IPv6 address (RFC 4291 text)' } as const;
const ip = { anyOf: [ipv4, ipv6], description: 'IPv4 or IPv6 address' } as const;
const cidr = { type: 'string', pattern: '^([0-9.]+(/[0-9]{1,2})?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/[0-9]{1,3})?)$', description: 'IPv4 or IPv6 CIDR, like 10.64.0.0/16 or fd00:10:244::/56' } as const;
/** one value or kube-proxy's dual-stack pair "IPv4,IPv6" */
const pairOf = (pattern: string, description: string) => ({ type: 'string', pattern: `^${pattern}(,${pattern})?$`, description }) as const;
const ipText = '([0-9.]+|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)';
const cidrText = '([0-9.]+(/[0-9]{1,2})?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/[0-9]{1,3})?)';
const family = { enum: ['IPv4', 'IPv6'] } as const;
const dnsLabel = { type: 'string', pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', maxLength: 63 } as const;

export const ruleSetSchema = {
  $id: 'https://tunproxy.dev/schemas/ruleset-v1.json',
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'tunproxy rule set',
  description: 'What kube-proxy acts on: the node, the services and their endpoints.',
  type: 'object',
  additionalProperties: false,
  required: ['apiVersion', 'node', 'services'],
  properties: {
    apiVersion: { const: API_VERSION },
    node: {
      type: 'object',
      additionalProperties: false,
      required: ['addresses'],
      properties: {
        name: { type: 'string' },
        addresses: { type: 'array', minItems: 1, items: ip, description: 'the local addresses, IPv4 and IPv6 (-m addrtype --dst-type LOCAL); NodePorts answer on these' },
        masqueradeAddress: pairOf(ipText, 'SNAT source, or a dual-stack pair "IPv4,IPv6"; default per family: the first node address of that family inside clusterCIDR, else the first of that family'),
        clusterCIDR: pairOf(cidrText, 'pod CIDR (kube-proxy\'s --cluster-cidr), or its dual-stack pair "10.244.0.0/16,fd00:10:244::/56"'),
        masqueradeAll: { type: 'boolean', default: false },
        masqueradeMark: { type: 'string', pattern: '^0x[0-9a-fA-F]{1,8}$', default: '0x4000' },
        nodePortRange: { type: 'string', pattern: '^[0-9]+-[0-9]+$', default: '30000-32767' },
        loadBalancing: { enum: ['random', 'maglev'], default: 'random' },
        maglevTableSize: { type: 'integer', minimum: 7, maximum: 1000003, description: 'a prime' },
      },
    },
    services: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['namespace', 'name', 'ports'],
        properties: {
          namespace: dnsLabel,
          name: dnsLabel,
          clusterIP: { anyOf: [ipv4, ipv6, { const: 'None' }], description: 'the primary family\'s ClusterIP (= clusterIPs[0]), "None" when headless' },
          clusterIPs: { type: 'array', minItems: 1, maxItems: 2, items: { anyOf: [ipv4, ipv6, { const: 'None' }] }, description: 'a ClusterIP per family, in ipFamilies order' },
          ipFamilies: { type: 'array', minItems: 1, maxItems: 2, uniqueItems: true, items: family, description: 'the IP families, primary first' },
          ipFamilyPolicy: { enum: ['SingleStack', 'PreferDualStack', 'RequireDualStack'], description: 'SingleStack takes one family, RequireDualStack two, PreferDualStack one or two; when absent, as many as ipFamilies or clusterIPs list' },
          ports: {
            type: 'array',
            minItems: 1,
            items: {
              type: 'object',
              additionalProperties: false,
              required: ['name', 'protocol', 'port'],
              properties: {
                name: { type: 'string', maxLength: 63 },
                protocol: { enum: ['TCP', 'UDP', 'SCTP'] },
                port: { type: 'integer', minimum: 1, maximum: 65535 },
                nodePort: { type: 'integer', minimum: 0, maximum: 65535 },
                targetPort: { anyOf: [{ type: 'integer', minimum: 1, maximum: 65535 }, { type: 'string', maxLength: 15 }] },
              },
            },
          },
          externalIPs: { type: 'array', items: ip },
          loadBalancerIPs: { type: 'array', items: ip },
          loadBalancerSourceRanges: { type: 'array', items: cidr },
          sessionAffinity: { enum: ['None', 'ClientIP'], default: 'None' },
          sessionAffinityTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 86400, default: 10800 },
          externalTrafficPolicy: { enum: ['Cluster', 'Local'], default: 'Cluster' },
          internalTrafficPolicy: { enum: ['Cluster', 'Local'], default: 'Cluster' },
          endpoints: {
            type: 'array',
            items: {
              type: 'object',
              additionalProperties: false,
              required: ['address'],
              properties: {
                address: ip,
                ports: { type: 'object', additionalProperties: { type: 'integer', minimum: 1, maximum: 65535 }, description: 'port per service-port name' },
                ready: { type: 'boolean', default: true },
                serving: { type: 'boolean' },
                terminating: { type: 'boolean', default: false },
                nodeLocal: { type: 'boolean', default: false },
              },
            },
          },
        },
      },
    },
  },
} as const;
