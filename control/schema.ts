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
const cidr = { type: 'string', pattern: '^[0-9.]+(/[0-9]{1,2})?$', description: 'IPv4 CIDR, like 10.64.0.0/16' } as const;
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
        addresses: { type: 'array', minItems: 1, items: ipv4, description: 'the local addresses (-m addrtype --dst-type LOCAL); NodePorts answer on these' },
        masqueradeAddress: { ...ipv4, description: 'SNAT source; default: the first address inside clusterCIDR, else addresses[0]' },
        clusterCIDR: { ...cidr, description: "pod CIDR (kube-proxy's --cluster-cidr)" },
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
          clusterIP: { anyOf: [ipv4, { const: 'None' }] },
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
          externalIPs: { type: 'array', items: ipv4 },
          loadBalancerIPs: { type: 'array', items: ipv4 },
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
                address: ipv4,
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
