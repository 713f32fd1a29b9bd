/**
 * Rule-set validation: every error names its path and its reason
 * (`services[3].ports[0].nodePort: 70000 is outside 30000-32767`), and
 * conflicts are refused instead of letting one service win silently.
 */
import { API_VERSION } from './types.ts';
import type { RuleSet } from './types.ts';
import { parseCidr, parseIPv4, protocolNumber, vipKey, nodePortKey } from '../dataplane/addr.ts';
import type { ProtocolName } from '../dataplane/addr.ts';

export interface ValidationError {
  path: string;
  message: string;
}

export type ValidationResult = { ok: true; ruleSet: RuleSet } | { ok: false; errors: ValidationError[] };

export class RuleSetError extends Error {
  readonly errors: ValidationError[];
  constructor(errors: ValidationError[]) {
    super(`rule set rejected (${errors.length} error${errors.length === 1 ? '' : 's'}):\n` + errors.map((e) => `  ${e.path}: ${e.message}`).join('\n'));
    this.name = 'RuleSetError';
    this.errors = errors;
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const PORT_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const MAX_SERVICES = 1_000_000;

const ROOT_FIELDS = new Set(['apiVersion', 'node', 'services']);
const NODE_FIELDS = new Set(['name', 'addresses', 'masqueradeAddress', 'clusterCIDR', 'masqueradeAll', 'masqueradeMark', 'nodePortRange', 'loadBalancing', 'maglevTableSize']);
const SERVICE_FIELDS = new Set(['namespace', 'name', 'clusterIP', 'ports', 'externalIPs', 'loadBalancerIPs', 'loadBalancerSourceRanges', 'sessionAffinity', 'sessionAffinityTimeoutSeconds', 'externalTrafficPolicy', 'internalTrafficPolicy', 'endpoints']);
const PORT_FIELDS = new Set(['name', 'protocol', 'port', 'nodePort', 'targetPort']);
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function isPrime(n: number): boolean {
  if (n < 2 || !Number.isInteger(n)) return false;
  for (let i = 2; i * i <= n; i++) if (n % i === 0) return false;
  return true;
}

class Checker {
  errors: ValidationError[] = [];
  err(path: string, message: string): void {
    if (this.errors.length < 1000) this.errors.push({ path, message });
  }
  fields(o: Obj, path: string, allowed: ReadonlySet<string>, required: readonly string[]): void {
    for (const k in o) if (!allowed.has(k)) this.err(path ? `${path}.${k}` : k, `unknown field (allowed: ${[...allowed].join(', ')})`);
    for (let i = 0; i < required.length; i++) if (o[required[i]] === undefined) this.err(path ? `${path}.${required[i]}` : required[i], 'is required');
  }
  ipv4(v: unknown, path: string): boolean {
    if (typeof v !== 'string') return this.err(path, `must be an IPv4 address string, got ${describe(v)}`), false;
    if (v.includes(':')) return this.err(path, `${v} is an IPv6 address; only IPv4 is supported`), false;
    if (parseIPv4(v) < 0) return this.err(path, `${JSON.stringify(v)} is not an IPv4 address`), false;
    return true;
  }
  cidr(v: unknown, path: string): boolean {
    if (typeof v !== 'string' || parseCidr(v) === null) return this.err(path, `${describe(v)} is not an IPv4 CIDR (like 10.64.0.0/16)`), false;
    return true;
  }
  bool(v: unknown, path: string): void {
    if (v !== undefined && typeof v !== 'boolean') this.err(path, `must be true or false, got ${describe(v)}`);
  }
  int(v: unknown, path: string, lo: number, hi: number): boolean {
    if (typeof v !== 'number' || !Number.isInteger(v)) return this.err(path, `must be an integer, got ${describe(v)}`), false;
    if (v < lo || v > hi) return this.err(path, `${v} is outside ${lo}-${hi}`), false;
    return true;
  }
  oneOf(v: unknown, path: string, options: readonly string[]): void {
    if (v !== undefined && !options.includes(v as string)) this.err(path, `${describe(v)} is not one of ${options.join(', ')}`);
  }
  ipList(v: unknown, path: string): string[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) return this.err(path, 'must be an array of IPv4 addresses'), [];
    const out: string[] = [];
    const seen = new Set<string>();
    v.forEach((a, i) => {
      if (this.ipv4(a, `${path}[${i}]`)) {
        if (seen.has(a as string)) this.err(`${path}[${i}]`, `${a} is listed twice`);
        seen.add(a as string);
        out.push(a as string);
      }
    });
    return out;
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 40 ? s.slice(0, 37) + '...' : s;
}

const ENDPOINT_FIELDS = new Set(['address', 'ports', 'ready', 'serving', 'terminating', 'nodeLocal']);
const isBoolOrUndef = (v: unknown) => v === undefined || typeof v === 'boolean';

/** An endpoint with nothing to report (checked without building any path string); records its address. */
function plainEndpoint(ep: unknown, portNames: Set<string>, namedTarget: boolean, seen: Set<number>): boolean {
  if (!isObj(ep)) return false;
  for (const k in ep) if (!ENDPOINT_FIELDS.has(k)) return false;
  if (typeof ep.address !== 'string') return false;
  const a = parseIPv4(ep.address);
  if (a < 0 || seen.has(a)) return false;
  if (!isBoolOrUndef(ep.ready) || !isBoolOrUndef(ep.serving) || !isBoolOrUndef(ep.terminating) || !isBoolOrUndef(ep.nodeLocal)) return false;
  if (ep.ports === undefined) {
    if (namedTarget) return false;
  } else {
    if (!isObj(ep.ports)) return false;
    for (const name in ep.ports) {
      const n = ep.ports[name];
      if (!portNames.has(name) || typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) return false;
    }
  }
  seen.add(a);
  return true;
}

/** Validate an untrusted rule set. On success the same object is returned (defaults are applied later, in control/model.ts). */
export function validateRuleSet(input: unknown): ValidationResult {
  const c = new Checker();
  if (!isObj(input)) return { ok: false, errors: [{ path: '(root)', message: `a rule set must be a JSON object, got ${describe(input)}` }] };
  c.fields(input, '', ROOT_FIELDS, ['apiVersion', 'node', 'services']);
  if (input.apiVersion !== undefined && input.apiVersion !== API_VERSION) c.err('apiVersion', `${describe(input.apiVersion)} is not supported (expected "${API_VERSION}")`);

  // node
  let range: [number, number] = [30000, 32767];
  const nodeAddrs = new Set<string>();
  const node = input.node;
  if (node !== undefined && !isObj(node)) c.err('node', 'must be an object');
  if (isObj(node)) {
    c.fields(node, 'node', NODE_FIELDS, ['addresses']);
    if (node.name !== undefined && typeof node.name !== 'string') c.err('node.name', 'must be a string');
    if (node.addresses !== undefined) {
      const a = c.ipList(node.addresses, 'node.addresses');
      if (Array.isArray(node.addresses) && node.addresses.length === 0) c.err('node.addresses', 'must list at least one address (what -m addrtype --dst-type LOCAL matches)');
      a.forEach((x) => nodeAddrs.add(x));
    }
    if (node.masqueradeAddress !== undefined) c.ipv4(node.masqueradeAddress, 'node.masqueradeAddress');
    if (node.clusterCIDR !== undefined) c.cidr(node.clusterCIDR, 'node.clusterCIDR');
    c.bool(node.masqueradeAll, 'node.masqueradeAll');
    if (node.masqueradeMark !== undefined) {
      const m = node.masqueradeMark;
      const n = typeof m === 'string' && /^0x[0-9a-fA-F]{1,8}$/.test(m) ? parseInt(m, 16) : -1;
      if (n <= 0 || (n & (n - 1)) !== 0) c.err('node.masqueradeMark', `${describe(m)} must be one bit as hex, like "0x4000"`);
    }
    if (node.nodePortRange !== undefined) {
      const m = typeof node.nodePortRange === 'string' ? /^(\d+)-(\d+)$/.exec(node.nodePortRange) : null;
      const lo = m ? Number(m[1]) : NaN;
      const hi = m ? Number(m[2]) : NaN;
      if (!m || lo < 1 || hi > 65535 || lo > hi) c.err('node.nodePortRange', `${describe(node.nodePortRange)} must be "LOW-HIGH" within 1-65535`);
      else range = [lo, hi];
    }
    c.oneOf(node.loadBalancing, 'node.loadBalancing', ['random', 'maglev']);
    if (node.maglevTableSize !== undefined && c.int(node.maglevTableSize, 'node.maglevTableSize', 7, 1_000_003) && !isPrime(node.maglevTableSize as number))
      c.err('node.maglevTableSize', `${node.maglevTableSize} is not a prime (Maglev needs a prime table size, e.g. 65537)`);
  }

  // services
  const services = input.services;
  if (services !== undefined && !Array.isArray(services)) c.err('services', 'must be an array');
  if (Array.isArray(services)) {
    if (services.length > MAX_SERVICES) c.err('services', `${services.length} services is more than ${MAX_SERVICES}`);
    const names = new Map<string, number>();
    // numeric keys (vipKey / nodePortKey) → where: services index * 2^12 + ports index * 4 + kind
    const vips = new Map<number, number>();
    const nodePorts = new Map<number, number>();
    const KINDS = ['cluster IP', 'external IP', 'loadbalancer IP'];
    const where = (w: number): string => {
      const si = Math.floor(w / 4096);
      const pi = (w >> 2) & 1023;
      const sv = services[si] as Obj;
      const pt = (sv.ports as Obj[])[pi];
      return `services[${si}].ports[${pi}] (${sv.namespace}/${sv.name}:${pt.name}`;
    };
    for (let si = 0; si < services.length; si++) {
      const svc: unknown = services[si];
      const sp = `services[${si}]`;
      if (!isObj(svc)) {
        c.err(sp, 'must be an object');
        continue;
      }
      c.fields(svc, sp, SERVICE_FIELDS, ['namespace', 'name', 'ports']);
      for (const f of ['namespace', 'name'] as const) {
        const v = svc[f];
        if (v !== undefined && (typeof v !== 'string' || !DNS_LABEL.test(v) || v.length > 63)) c.err(`${sp}.${f}`, `${describe(v)} is not a DNS label (lowercase letters, digits, '-', at most 63)`);
      }
      const id = `${svc.namespace}/${svc.name}`;
      if (typeof svc.namespace === 'string' && typeof svc.name === 'string') {
        const prev = names.get(id);
        if (prev !== undefined) c.err(sp, `service ${id} is already defined by services[${prev}]`);
        else names.set(id, si);
      }
      let clusterIP: string | null = null;
      if (svc.clusterIP !== undefined && svc.clusterIP !== 'None' && c.ipv4(svc.clusterIP, `${sp}.clusterIP`)) {
        clusterIP = svc.clusterIP as string;
        if (nodeAddrs.has(clusterIP)) c.err(`${sp}.clusterIP`, `${clusterIP} is a node address`);
      }
      const externalIPs = c.ipList(svc.externalIPs, `${sp}.externalIPs`);
      const lbIPs = c.ipList(svc.loadBalancerIPs, `${sp}.loadBalancerIPs`);
      if (svc.loadBalancerSourceRanges !== undefined) {
        if (!Array.isArray(svc.loadBalancerSourceRanges)) c.err(`${sp}.loadBalancerSourceRanges`, 'must be an array of CIDRs');
        else svc.loadBalancerSourceRanges.forEach((r, i) => c.cidr(r, `${sp}.loadBalancerSourceRanges[${i}]`));
      }
      c.oneOf(svc.sessionAffinity, `${sp}.sessionAffinity`, ['None', 'ClientIP']);
      if (svc.sessionAffinityTimeoutSeconds !== undefined) c.int(svc.sessionAffinityTimeoutSeconds, `${sp}.sessionAffinityTimeoutSeconds`, 1, 86400);
      c.oneOf(svc.externalTrafficPolicy, `${sp}.externalTrafficPolicy`, ['Cluster', 'Local']);
      c.oneOf(svc.internalTrafficPolicy, `${sp}.internalTrafficPolicy`, ['Cluster', 'Local']);

      const portNames = new Set<string>();
      if (svc.ports !== undefined && (!Array.isArray(svc.ports) || svc.ports.length === 0)) c.err(`${sp}.ports`, 'must be a non-empty array');
      const ports = Array.isArray(svc.ports) ? svc.ports : [];
      for (let pi = 0; pi < ports.length; pi++) {
        const p: unknown = ports[pi];
        const pp = `${sp}.ports[${pi}]`;
        if (!isObj(p)) {
          c.err(pp, 'must be an object');
          continue;
        }
        c.fields(p, pp, PORT_FIELDS, ['name', 'protocol', 'port']);
        if (typeof p.name !== 'string') {
          if (p.name !== undefined) c.err(`${pp}.name`, 'must be a string');
        } else if (p.name === '') {
          if (ports.length > 1) c.err(`${pp}.name`, 'may be empty only when the service has a single port');
        } else if (!PORT_NAME.test(p.name) || p.name.length > 63) c.err(`${pp}.name`, `${describe(p.name)} is not a valid port name`);
        if (typeof p.name === 'string') {
          if (portNames.has(p.name)) c.err(`${pp}.name`, `port name ${describe(p.name)} is used twice in ${id}`);
          portNames.add(p.name);
        }
        c.oneOf(p.protocol, `${pp}.protocol`, ['TCP', 'UDP', 'SCTP']);
        if (p.protocol === undefined) continue;
        const portOk = p.port !== undefined && c.int(p.port, `${pp}.port`, 1, 65535);
        if (p.nodePort !== undefined && p.nodePort !== 0 && c.int(p.nodePort, `${pp}.nodePort`, 1, 65535)) {
          const np = p.nodePort as number;
          if (np < range[0] || np > range[1]) c.err(`${pp}.nodePort`, `${np} is outside ${range[0]}-${range[1]}`);
          else {
            const k = nodePortKey(protocolNumber(p.protocol as ProtocolName), np);
            const prev = nodePorts.get(k);
            if (prev !== undefined) c.err(`${pp}.nodePort`, `${np}/${p.protocol} is already the NodePort of ${where(prev)})`);
            else nodePorts.set(k, si * 4096 + pi * 4);
          }
        }
        if (p.targetPort !== undefined) {
          if (typeof p.targetPort === 'number') c.int(p.targetPort, `${pp}.targetPort`, 1, 65535);
          else if (typeof p.targetPort !== 'string' || !PORT_NAME.test(p.targetPort)) c.err(`${pp}.targetPort`, `${describe(p.targetPort)} must be a port number or a port name`);
        }
        if (!portOk) continue;
        const proto = protocolNumber(p.protocol as ProtocolName);
        const claim = (addr: string, kind: number) => {
          const k = vipKey(parseIPv4(addr), proto, p.port as number);
          const prev = vips.get(k);
          if (prev !== undefined) c.err(pp, `${addr}:${p.port}/${p.protocol} (${KINDS[kind]}) is already used by ${where(prev)} ${KINDS[prev & 3]})`);
          else vips.set(k, si * 4096 + pi * 4 + kind);
        };
        if (clusterIP) claim(clusterIP, 0);
        for (const a of externalIPs) claim(a, 1);
        for (const a of lbIPs) claim(a, 2);
      }

      if (svc.endpoints !== undefined && !Array.isArray(svc.endpoints)) c.err(`${sp}.endpoints`, 'must be an array');
      const seenEp = new Set<number>();
      let namedTarget = false;
      for (let pi = 0; pi < ports.length; pi++) if (isObj(ports[pi]) && typeof (ports[pi] as Obj).targetPort === 'string') namedTarget = true;
      const eps: unknown[] = Array.isArray(svc.endpoints) ? svc.endpoints : [];
      for (let ei = 0; ei < eps.length; ei++) {
        const ep = eps[ei];
        if (plainEndpoint(ep, portNames, namedTarget, seenEp)) continue; // the common case: no strings built
        const ep_ = `${sp}.endpoints[${ei}]`;
        if (!isObj(ep)) {
          c.err(ep_, 'must be an object');
          continue;
        }
        c.fields(ep, ep_, ENDPOINT_FIELDS, ['address']);
        if (ep.address !== undefined && c.ipv4(ep.address, `${ep_}.address`)) {
          const a = parseIPv4(ep.address as string);
          if (seenEp.has(a)) c.err(`${ep_}.address`, `${ep.address} is listed twice in ${id}`);
          seenEp.add(a);
        }
        if (ep.ports !== undefined) {
          if (!isObj(ep.ports)) c.err(`${ep_}.ports`, 'must map service-port names to port numbers');
          else for (const [name, num] of Object.entries(ep.ports)) {
            if (!portNames.has(name)) c.err(`${ep_}.ports.${name || '""'}`, `${id} has no port named ${JSON.stringify(name)}`);
            c.int(num, `${ep_}.ports.${name || '""'}`, 1, 65535);
          }
        } else {
          ports.forEach((p, pi) => {
            if (isObj(p) && typeof p.targetPort === 'string')
              c.err(`${ep_}.ports`, `is required: ${sp}.ports[${pi}] has the named targetPort ${JSON.stringify(p.targetPort)}`);
          });
        }
        for (const f of ['ready', 'serving', 'terminating', 'nodeLocal']) c.bool(ep[f], `${ep_}.${f}`);
      }
    }
  }
  if (c.errors.length > 0) return { ok: false, errors: c.errors };
  return { ok: true, ruleSet: input as unknown as RuleSet };
}

/** Validate or throw a RuleSetError listing every problem. */
export function parseRuleSet(input: unknown): RuleSet {
  const r = validateRuleSet(input);
  if (!r.ok) throw new RuleSetError(r.errors);
  return r.ruleSet;
}
