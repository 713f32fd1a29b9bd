/**
 * Rule-set validation: every error names its path and its reason
 * (`services[3].ports[0].nodePort: 70000 is outside 30000-32767`), and
 * conflicts are refused instead of letting one service win silently.
 *
 * Validation is also where the numeric model (control/model.ts) is built:
 * each service is checked field by field, and a service without errors is
 * turned into its model at once (addresses parsed here are not parsed
 * again); the conflicts (a name, a VIP key or a NodePort claimed twice, a
 * ClusterIP that is a node address) are then checked on the model by one
 * piece of code, `Conflicts`, for a full rule set and for the few services of
 * an incremental apply (against the keys in force, `KeysInForce`).
 */
import { API_VERSION } from './types.ts';
import type { RuleSet, Service } from './types.ts';
import { parseCidr, parseIPv4, protoIndex } from '../dataplane/addr.ts';
import { parseCidr6, looksIPv6 } from '../dataplane/addr6.ts';
import { VipIndex } from '../dataplane/hashtable.ts';
import { nodeModel, serviceModel, RuleSetModel, parseAddr, isIPv6, familyOf, splitPair, serviceFamilies, ADDR6_BASE } from './model.ts';
import type { Addr, Family, NodeModel, ServiceModel, ServicePortModel } from './model.ts';

export interface ValidationError {
  path: string;
  message: string;
}

export type ValidationResult = { ok: true; ruleSet: RuleSet; model: RuleSetModel } | { ok: false; errors: ValidationError[] };

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
const SERVICE_FIELDS = new Set(['namespace', 'name', 'clusterIP', 'clusterIPs', 'ipFamilies', 'ipFamilyPolicy', 'ports', 'externalIPs', 'loadBalancerIPs', 'loadBalancerSourceRanges', 'sessionAffinity', 'sessionAffinityTimeoutSeconds', 'externalTrafficPolicy', 'internalTrafficPolicy', 'endpoints']);
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
  /** every error found, also past the 1000 kept */
  count = 0;
  err(path: string, message: string): void {
    this.count++;
    if (this.errors.length < 1000) this.errors.push({ path, message });
  }
  fields(o: Obj, path: string, allowed: ReadonlySet<string>, required: readonly string[]): void {
    for (const k in o) if (!allowed.has(k)) this.err(path ? `${path}.${k}` : k, `unknown field (allowed: ${[...allowed].join(', ')})`);
    for (let i = 0; i < required.length; i++) if (o[required[i]] === undefined) this.err(path ? `${path}.${required[i]}` : required[i], 'is required');
  }
  /** An address of either family as an Addr, or -1 (error reported). */
  ip(v: unknown, path: string): Addr {
    if (typeof v !== 'string') return this.err(path, `must be an IPv4 or IPv6 address string, got ${describe(v)}`), -1;
    const a = parseAddr(v);
    if (a < 0) this.err(path, `${JSON.stringify(v)} is not an ${looksIPv6(v) ? 'IPv6' : 'IPv4'} address`);
    return a;
  }
  /** A CIDR of either family: its family, or 0 (error reported). */
  cidr(v: unknown, path: string): number {
    if (typeof v === 'string' && (looksIPv6(v) ? parseCidr6(v) !== null : parseCidr(v) !== null)) return looksIPv6(v) ? 6 : 4;
    this.err(path, `${describe(v)} is not an ${typeof v === 'string' && looksIPv6(v) ? 'IPv6 CIDR (like fd00:10:244::/56)' : 'IPv4 CIDR (like 10.64.0.0/16)'}`);
    return 0;
  }
  /** One value or kube-proxy's dual-stack pair "IPv4,IPv6" (one per family). */
  pair(v: unknown, path: string, one: (x: string, p: string) => number): void {
    if (typeof v !== 'string') return this.err(path, `must be a string, got ${describe(v)}`);
    const parts = splitPair(v);
    if (parts.length > 2) return this.err(path, `${describe(v)}: at most two, one per IP family ("IPv4,IPv6")`);
    const fams = parts.map((x) => one(x, path));
    if (fams.length === 2 && fams[0] !== 0 && fams[0] === fams[1]) this.err(path, `${describe(v)}: a dual-stack pair needs one of each IP family, not two IPv${fams[0]}`);
  }
  /** An address of the service's families: false (error reported) when its family is not one of them. */
  inFamilies(a: Addr, text: string, fams: readonly Family[], path: string): boolean {
    if (a < 0 || fams.includes(familyOf(a))) return true;
    this.err(path, `${text} is IPv${familyOf(a)}, but the service's IP families are [${fams.map((f) => 'IPv' + f).join(', ')}]`);
    return false;
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
  /** An array of addresses of either family (of `fams` when given): their Addrs. */
  ipList(v: unknown, path: string, fams?: readonly Family[]): Addr[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) return this.err(path, 'must be an array of IPv4 or IPv6 addresses'), [];
    const out: Addr[] = [];
    const seen = new Set<Addr>();
    v.forEach((a, i) => {
      const n = this.ip(a, `${path}[${i}]`);
      if (n < 0) return;
      if (seen.has(n)) this.err(`${path}[${i}]`, `${a} is listed twice`);
      else if (fams === undefined || this.inFamilies(n, a as string, fams, `${path}[${i}]`)) out.push(n);
      seen.add(n);
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

/** An endpoint with nothing to report (checked without building any path string; `fams`: bit 1 IPv4, bit 2 IPv6 allowed): its address as a number, else -1. */
function plainEndpoint(ep: unknown, portNames: SmallSet<string>, namedTarget: boolean, seen: SmallSet<number>, fams: number): Addr {
  if (!isObj(ep)) return -1;
  if (!onlyFields(ep, ENDPOINT_FIELDS)) return -1;
  if (typeof ep.address !== 'string') return -1;
  const a = parseAddr(ep.address);
  if (a < 0 || seen.has(a) || (fams & (a >= ADDR6_BASE ? 2 : 1)) === 0) return -1;
  if (!isBoolOrUndef(ep.ready) || !isBoolOrUndef(ep.serving) || !isBoolOrUndef(ep.terminating) || !isBoolOrUndef(ep.nodeLocal)) return -1;
  if (ep.ports === undefined) {
    if (namedTarget) return -1;
  } else {
    if (!isObj(ep.ports)) return -1;
    for (const name in ep.ports) {
      const n = ep.ports[name];
      if (!portNames.has(name) || typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) return -1;
    }
  }
  seen.add(a);
  return a;
}

const KINDS = ['cluster IP', 'external IP', 'loadbalancer IP'];
/** the family bit of Conflicts' VIP keys (above protoIndex * 65536 + port) */
const V6_KEY = 1 << 18;

/** Who holds a key in the rule set in force: the text naming it ("services[3].ports[0] (ns/name:port") and the kind of address (0 cluster, 1 external, 2 load balancer). */
export interface KeyHolder {
  where: string;
  kind: number;
}

/** The keys held by the services in force that stay (the incremental path: the tables in force answer). */
export interface KeysInForce {
  /** the holder of a VIP key (vipKey of address, protocol, port), or null */
  vip(addr: Addr, proto: number, port: number): KeyHolder | null;
  /** the holder of a NodePort (nodePortKey of protocol, port), or null */
  nodePort(proto: number, port: number): KeyHolder | null;
  /** the position of the service of this "ns/name" that stays, or -1 */
  service(key: string): number;
}

/**
 * The conflict check, one for both paths: each service's model claims its
 * name, its VIP keys and its NodePorts at its position in the new rule set;
 * a key already claimed (by a service checked before, or by a service in
 * force that stays) is an error at the later claim.
 */
export class Conflicts {
  private readonly c: Checker;
  private readonly inForce: KeysInForce | null;
  /** (address, protoIndex * 65536 + port) → position * 4 + kind: int pairs in an open-addressing table, no boxed keys */
  private vips: VipIndex;
  /** protoIndex * 65536 + port (a small integer key, never boxed) → position */
  private readonly nodePorts = new Map<number, number>();
  private readonly names = new Map<string, number>();
  /** position → the service's model (for the error texts); an array, not a Map: no hashing per service */
  private readonly models: ServiceModel[] = [];
  private readonly nodeAddrs: Set<Addr>;

  constructor(c: Checker, node: NodeModel, inForce: KeysInForce | null, expected = 64) {
    this.c = c;
    this.inForce = inForce;
    this.nodeAddrs = new Set(node.addrs);
    this.vips = new VipIndex(expected);
  }

  /** The text naming the first port of the service at `si` that has this protocol and port (or NodePort). */
  private where(si: number, proto: number, port: number, nodePort: boolean): string {
    const sm = this.models[si];
    let pi = 0;
    while (pi < sm.ports.length - 1 && !(sm.ports[pi].protocolNumber === proto && (nodePort ? sm.ports[pi].nodePort : sm.ports[pi].portNumber) === port)) pi++;
    return `services[${si}].ports[${pi % sm.service.ports.length}] (${sm.service.namespace}/${sm.service.name}:${sm.ports[pi].port.name}`;
  }

  claim(sm: ServiceModel, si: number): void {
    const c = this.c;
    this.models[si] = sm;
    const prev = this.names.get(sm.key) ?? this.inForce?.service(sm.key) ?? -1;
    if (prev >= 0) c.err(`services[${si}]`, `service ${sm.key} is already defined by services[${prev}]`);
    else this.names.set(sm.key, si);
    // each family's ClusterIP (the first port of each family carries it)
    for (let pi = 0; pi < sm.ports.length; pi++) {
      const p = sm.ports[pi];
      if (p.clusterAddr >= 0 && (pi === 0 || sm.ports[pi - 1].family !== p.family) && this.nodeAddrs.has(p.clusterAddr))
        c.err(`services[${si}].${p.clusterIP === sm.service.clusterIP ? 'clusterIP' : 'clusterIPs'}`, `${p.clusterIP} is a node address`);
    }
    // a dual-stack service port has a model per family; paths name the rule set's port (pi % n)
    const n = sm.service.ports.length;
    for (let mi = 0; mi < sm.ports.length; mi++) {
      const p = sm.ports[mi];
      const pi = mi % n;
      // a NodePort is the node's, whatever the family: claimed once per service port (by its first family)
      if (p.nodePort !== 0 && mi < n) {
        const k = protoIndex(p.protocolNumber) * 65536 + p.nodePort;
        const w = this.nodePorts.get(k) ?? -1;
        const f = w < 0 && this.inForce !== null ? this.inForce.nodePort(p.protocolNumber, p.nodePort) : null;
        if (w >= 0) c.err(`services[${si}].ports[${pi}].nodePort`, `${p.nodePort}/${p.protocol} is already the NodePort of ${this.where(w, p.protocolNumber, p.nodePort, true)})`);
        else if (f !== null) c.err(`services[${si}].ports[${pi}].nodePort`, `${p.nodePort}/${p.protocol} is already the NodePort of ${f.where})`);
        else this.nodePorts.set(k, si);
      }
      if (p.clusterAddr >= 0) this.claimVip(p, si, pi, p.clusterAddr, 0, 0);
      for (let i = 0; i < p.externalAddrs.length; i++) this.claimVip(p, si, pi, p.externalAddrs[i], 1, i);
      for (let i = 0; i < p.loadBalancerAddrs.length; i++) this.claimVip(p, si, pi, p.loadBalancerAddrs[i], 2, i);
    }
  }

  private claimVip(p: ServicePortModel, si: number, pi: number, addr: Addr, kind: number, i: number): void {
    // an IPv6 address keys by its pool index, with a family bit above any protocol+port
    const v6 = isIPv6(addr);
    const pp = protoIndex(p.protocolNumber) * 65536 + p.portNumber + (v6 ? V6_KEY : 0);
    const key = v6 ? addr - ADDR6_BASE : addr;
    const w = this.vips.get(key, pp);
    const f = w < 0 && this.inForce !== null ? this.inForce.vip(addr, p.protocolNumber, p.portNumber) : null;
    if (w >= 0 || f !== null) {
      const text = kind === 0 ? p.clusterIP! : kind === 1 ? p.externalIPs[i] : p.loadBalancerIPs[i];
      const by = w >= 0 ? `${this.where(w >> 2, p.protocolNumber, p.portNumber, false)} ${KINDS[w & 3]})` : `${f!.where} ${KINDS[f!.kind]})`;
      this.c.err(`services[${si}].ports[${pi}]`, `${text}:${p.portNumber}/${p.protocol} (${KINDS[kind]}) is already used by ${by}`);
      return;
    }
    if ((this.vips.size + 1) * 2 > this.vips.capacity) this.vips = this.vips.copy(this.vips.size * 2 + 2);
    this.vips.set(key, pp, si * 4 + kind);
  }
}

const isPortNumber = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;

/** A service port with nothing to report (checked without building any string); records its name. */
function plainPort(p: unknown, nPorts: number, names: SmallSet<string>, range: readonly [number, number]): boolean {
  if (!isObj(p)) return false;
  if (!onlyFields(p, PORT_FIELDS)) return false;
  const name = p.name;
  if (typeof name !== 'string' || names.has(name)) return false;
  if (name === '' ? nPorts > 1 : name.length > 63 || !PORT_NAME.test(name)) return false;
  if (p.protocol !== 'TCP' && p.protocol !== 'UDP' && p.protocol !== 'SCTP') return false;
  if (!isPortNumber(p.port)) return false;
  const np = p.nodePort;
  if (np !== undefined && np !== 0 && !(isPortNumber(np) && (np as number) >= range[0] && (np as number) <= range[1])) return false;
  const tp = p.targetPort;
  if (tp !== undefined && !(typeof tp === 'number' ? isPortNumber(tp) : typeof tp === 'string' && PORT_NAME.test(tp))) return false;
  names.add(name);
  return true;
}

const FAMILIES_HINT = 'must be ["IPv4"], ["IPv6"], ["IPv4", "IPv6"] or ["IPv6", "IPv4"]';
const fname = (f: Family): string => `IPv${f}`;

/**
 * The IP-family fields of a service (clusterIP, clusterIPs, ipFamilies,
 * ipFamilyPolicy) as the Kubernetes API server checks them: clusterIPs[0] is
 * clusterIP, one ClusterIP per family, ipFamilies in the order of
 * clusterIPs, SingleStack one family and RequireDualStack two. Returns the
 * service's families (control/model.ts serviceFamilies), or both when
 * something was wrong (so that its addresses are not reported again).
 */
function checkFamilies(c: Checker, svc: Obj, sp: string): readonly Family[] {
  const before = c.count;
  const cip = svc.clusterIP;
  let cipFam: Family | 0 = 0;
  if (cip !== undefined && cip !== 'None') {
    const a = c.ip(cip, `${sp}.clusterIP`);
    if (a >= 0) cipFam = familyOf(a);
  }
  const ipsFams: Family[] = [];
  const ips = svc.clusterIPs;
  if (ips !== undefined) {
    if (!Array.isArray(ips) || ips.length === 0 || ips.length > 2) c.err(`${sp}.clusterIPs`, 'must be an array of one or two addresses (one per IP family), or ["None"]');
    else {
      ips.forEach((x, i) => {
        const p = `${sp}.clusterIPs[${i}]`;
        if (x === 'None') {
          if (ips.length !== 1) c.err(p, '"None" (headless) must be the only entry');
          return;
        }
        const a = c.ip(x, p);
        if (a >= 0) ipsFams.push(familyOf(a));
      });
      if (ipsFams.length === 2 && ipsFams[0] === ipsFams[1]) c.err(`${sp}.clusterIPs[1]`, `${describe(ips[1])} is a second ${fname(ipsFams[1])} address: a dual-stack service has one ClusterIP per family`);
      if (cip !== undefined && ips[0] !== cip) c.err(`${sp}.clusterIPs[0]`, `${describe(ips[0])} must equal clusterIP ${describe(cip)}`);
    }
  }
  let given: Family[] | null = null;
  const fl = svc.ipFamilies;
  if (fl !== undefined) {
    if (!Array.isArray(fl) || fl.length === 0 || fl.length > 2) c.err(`${sp}.ipFamilies`, FAMILIES_HINT);
    else {
      const g: Family[] = [];
      fl.forEach((f, i) => {
        if (f === 'IPv4' || f === 'IPv6') g.push(f === 'IPv6' ? 6 : 4);
        else c.err(`${sp}.ipFamilies[${i}]`, `${describe(f)} is not one of IPv4, IPv6`);
      });
      if (g.length === 2 && g[0] === g[1]) c.err(`${sp}.ipFamilies[1]`, `${fname(g[1])} is listed twice`);
      else if (g.length === fl.length) given = g;
    }
  }
  const ipF: Family[] = ipsFams.length > 0 ? ipsFams : cipFam !== 0 ? [cipFam] : [];
  if (given !== null) {
    if (cipFam !== 0 && given.length > 0 && given[0] !== cipFam) c.err(`${sp}.clusterIP`, `${cip} is ${fname(cipFam)}, but ipFamilies[0] is ${fname(given[0])}`);
    ipsFams.forEach((f, i) => {
      if (i >= given!.length) c.err(`${sp}.clusterIPs[${i}]`, `${describe((ips as unknown[])[i])} is ${fname(f)}, but ipFamilies lists only [${given!.map(fname).join(', ')}]`);
      else if (given![i] !== f) c.err(`${sp}.clusterIPs[${i}]`, `${describe((ips as unknown[])[i])} is ${fname(f)}, but ipFamilies[${i}] is ${fname(given![i])}`);
    });
  }
  const pol = svc.ipFamilyPolicy;
  c.oneOf(pol, `${sp}.ipFamilyPolicy`, ['SingleStack', 'PreferDualStack', 'RequireDualStack']);
  const n = given !== null ? given.length : ipF.length;
  if (pol === 'SingleStack' && n === 2) c.err(`${sp}.ipFamilyPolicy`, 'SingleStack takes one IP family, but the service lists two (ipFamilies, clusterIPs)');
  if (pol === 'RequireDualStack' && n < 2) c.err(`${sp}.ipFamilyPolicy`, 'RequireDualStack needs both IP families: list them in ipFamilies (and a ClusterIP of each in clusterIPs)');
  if (c.count !== before) return BOTH_FAMILIES;
  return serviceFamilies(svc as unknown as Service);
}
const BOTH_FAMILIES: readonly Family[] = [4, 6];
const ONLY_IPV4: readonly Family[] = [4];
/** the node's families as bits: 1 IPv4, 2 IPv6 */
const nodeFamilies = (n: NodeModel): number => (n.addrs4.length > 0 ? 1 : 0) | (n.addrs6.length > 0 ? 2 : 0);

const SERVICE_REQUIRED = ['namespace', 'name', 'ports'] as const;
const PORT_REQUIRED = ['name', 'protocol', 'port'] as const;
const ENDPOINT_REQUIRED = ['address'] as const;
/** The path of the service at `si` in the rule set, for an error. */
const svcPath = (si: number): string => `services[${si}]`;
/** Whether every field of `o` is one of `allowed` (checked without building a string). */
function onlyFields(o: Obj, allowed: ReadonlySet<string>): boolean {
  for (const k in o) if (!allowed.has(k)) return false;
  return true;
}

/**
 * A set of the few values one service has (its port names, its endpoints'
 * addresses), reused from service to service: an array scanned while it
 * holds at most SMALL values, a Set past that. Validation is synchronous, so
 * one of each per thread serves every service in turn (`reset` empties it).
 */
class SmallSet<T> {
  static readonly SMALL = 16;
  private readonly a: T[] = [];
  private n = 0;
  private big: Set<T> | null = null;
  reset(): this {
    this.n = 0;
    this.big = null;
    return this;
  }
  has(v: T): boolean {
    if (this.big !== null) return this.big.has(v);
    for (let i = 0; i < this.n; i++) if (this.a[i] === v) return true;
    return false;
  }
  add(v: T): void {
    if (this.big !== null) {
      this.big.add(v);
      return;
    }
    if (this.n < SmallSet.SMALL) {
      if (!this.has(v)) this.a[this.n++] = v;
      return;
    }
    if (this.has(v)) return;
    this.big = new Set(this.a.slice(0, this.n));
    this.big.add(v);
  }
}
const PORT_NAMES = new SmallSet<string>();
const SEEN_ENDPOINTS = new SmallSet<number>();

/**
 * Check one service field by field (`si`: its position in the rule set, for
 * the paths). Returns its endpoints' addresses as numbers when nothing was
 * wrong with it, else null.
 */
function checkService(c: Checker, svc: unknown, si: number, range: readonly [number, number], nodeFams: number): Addr[] | null {
  const before = c.count;
  if (!isObj(svc)) {
    c.err(svcPath(si), 'must be an object');
    return null;
  }
  if (!onlyFields(svc, SERVICE_FIELDS) || svc.namespace === undefined || svc.name === undefined || svc.ports === undefined) c.fields(svc, svcPath(si), SERVICE_FIELDS, SERVICE_REQUIRED);
  for (let k = 0; k < 2; k++) {
    const f = k === 0 ? 'namespace' : 'name';
    const v = svc[f];
    if (v !== undefined && (typeof v !== 'string' || !DNS_LABEL.test(v) || v.length > 63)) c.err(`${svcPath(si)}.${f}`, `${describe(v)} is not a DNS label (lowercase letters, digits, '-', at most 63)`);
  }
  // paths and names are built only for an error: a good service costs no strings
  const cip = svc.clusterIP;
  const plainFamilies = svc.clusterIPs === undefined && svc.ipFamilies === undefined && svc.ipFamilyPolicy === undefined && (cip === undefined || cip === 'None' || (typeof cip === 'string' && parseIPv4(cip) >= 0));
  const fams = plainFamilies && cip !== undefined && cip !== 'None' ? ONLY_IPV4 : checkFamilies(c, svc, svcPath(si));
  const famBits = (fams.includes(4) ? 1 : 0) | (fams.includes(6) ? 2 : 0);
  if ((famBits & 2) !== 0 && (nodeFams & 2) === 0 && fams !== BOTH_FAMILIES)
    c.err(svcPath(si), `${svc.namespace}/${svc.name} is IPv6 (its IP families are [${fams.map(fname).join(', ')}]), but node.addresses has no IPv6 address (to answer NodePorts on and masquerade to)`);
  if (svc.externalIPs !== undefined) c.ipList(svc.externalIPs, `${svcPath(si)}.externalIPs`, fams);
  if (svc.loadBalancerIPs !== undefined) c.ipList(svc.loadBalancerIPs, `${svcPath(si)}.loadBalancerIPs`, fams);
  if (svc.loadBalancerSourceRanges !== undefined) {
    if (!Array.isArray(svc.loadBalancerSourceRanges)) c.err(`${svcPath(si)}.loadBalancerSourceRanges`, 'must be an array of CIDRs');
    else
      svc.loadBalancerSourceRanges.forEach((r, i) => {
        const f = c.cidr(r, `${svcPath(si)}.loadBalancerSourceRanges[${i}]`);
        if (f !== 0 && !fams.includes(f as Family)) c.err(`${svcPath(si)}.loadBalancerSourceRanges[${i}]`, `${r} is IPv${f}, but the service's IP families are [${fams.map(fname).join(', ')}]`);
      });
  }
  if (svc.sessionAffinity !== undefined) c.oneOf(svc.sessionAffinity, `${svcPath(si)}.sessionAffinity`, ['None', 'ClientIP']);
  if (svc.sessionAffinityTimeoutSeconds !== undefined) c.int(svc.sessionAffinityTimeoutSeconds, `${svcPath(si)}.sessionAffinityTimeoutSeconds`, 1, 86400);
  if (svc.externalTrafficPolicy !== undefined) c.oneOf(svc.externalTrafficPolicy, `${svcPath(si)}.externalTrafficPolicy`, ['Cluster', 'Local']);
  if (svc.internalTrafficPolicy !== undefined) c.oneOf(svc.internalTrafficPolicy, `${svcPath(si)}.internalTrafficPolicy`, ['Cluster', 'Local']);

  // one service's port names and endpoint addresses: the module's two small sets, emptied for each service (no Set made per service)
  const portNames = PORT_NAMES.reset();
  if (svc.ports !== undefined && (!Array.isArray(svc.ports) || svc.ports.length === 0)) c.err(`${svcPath(si)}.ports`, 'must be a non-empty array');
  const ports = Array.isArray(svc.ports) ? svc.ports : [];
  for (let pi = 0; pi < ports.length; pi++) {
    const p: unknown = ports[pi];
    if (plainPort(p, ports.length, portNames, range)) continue; // the common case: no strings built
    const pp = `${svcPath(si)}.ports[${pi}]`;
    if (!isObj(p)) {
      c.err(pp, 'must be an object');
      continue;
    }
    c.fields(p, pp, PORT_FIELDS, PORT_REQUIRED);
    if (typeof p.name !== 'string') {
      if (p.name !== undefined) c.err(`${pp}.name`, 'must be a string');
    } else if (p.name === '') {
      if (ports.length > 1) c.err(`${pp}.name`, 'may be empty only when the service has a single port');
    } else if (!PORT_NAME.test(p.name) || p.name.length > 63) c.err(`${pp}.name`, `${describe(p.name)} is not a valid port name`);
    if (typeof p.name === 'string') {
      if (portNames.has(p.name)) c.err(`${pp}.name`, `port name ${describe(p.name)} is used twice in ${svc.namespace}/${svc.name}`);
      portNames.add(p.name);
    }
    c.oneOf(p.protocol, `${pp}.protocol`, ['TCP', 'UDP', 'SCTP']);
    if (p.protocol === undefined) continue;
    if (p.port !== undefined) c.int(p.port, `${pp}.port`, 1, 65535);
    if (p.nodePort !== undefined && p.nodePort !== 0 && c.int(p.nodePort, `${pp}.nodePort`, 1, 65535)) {
      const np = p.nodePort as number;
      if (np < range[0] || np > range[1]) c.err(`${pp}.nodePort`, `${np} is outside ${range[0]}-${range[1]}`);
    }
    if (p.targetPort !== undefined) {
      if (typeof p.targetPort === 'number') c.int(p.targetPort, `${pp}.targetPort`, 1, 65535);
      else if (typeof p.targetPort !== 'string' || !PORT_NAME.test(p.targetPort)) c.err(`${pp}.targetPort`, `${describe(p.targetPort)} must be a port number or a port name`);
    }
  }

  if (svc.endpoints !== undefined && !Array.isArray(svc.endpoints)) c.err(`${svcPath(si)}.endpoints`, 'must be an array');
  const seenEp = SEEN_ENDPOINTS.reset();
  let namedTarget = false;
  for (let pi = 0; pi < ports.length; pi++) if (isObj(ports[pi]) && typeof (ports[pi] as Obj).targetPort === 'string') namedTarget = true;
  const eps: unknown[] = Array.isArray(svc.endpoints) ? svc.endpoints : [];
  const addrs: Addr[] = new Array(eps.length);
  for (let ei = 0; ei < eps.length; ei++) {
    const ep = eps[ei];
    const pa = plainEndpoint(ep, portNames, namedTarget, seenEp, famBits);
    addrs[ei] = pa;
    if (pa >= 0) continue; // the common case: no strings built
    const ep_ = `${svcPath(si)}.endpoints[${ei}]`;
    if (!isObj(ep)) {
      c.err(ep_, 'must be an object');
      continue;
    }
    c.fields(ep, ep_, ENDPOINT_FIELDS, ENDPOINT_REQUIRED);
    const a = ep.address === undefined ? -1 : c.ip(ep.address, `${ep_}.address`);
    if (a >= 0) {
      if (seenEp.has(a)) c.err(`${ep_}.address`, `${ep.address} is listed twice in ${svc.namespace}/${svc.name}`);
      else c.inFamilies(a, ep.address as string, fams, `${ep_}.address`);
      seenEp.add(a);
      addrs[ei] = a;
    }
    if (ep.ports !== undefined) {
      if (!isObj(ep.ports)) c.err(`${ep_}.ports`, 'must map service-port names to port numbers');
      else for (const [name, num] of Object.entries(ep.ports)) {
        if (!portNames.has(name)) c.err(`${ep_}.ports.${name || '""'}`, `${svc.namespace}/${svc.name} has no port named ${JSON.stringify(name)}`);
        c.int(num, `${ep_}.ports.${name || '""'}`, 1, 65535);
      }
    } else {
      ports.forEach((p, pi) => {
        if (isObj(p) && typeof p.targetPort === 'string')
          c.err(`${ep_}.ports`, `is required: ${svcPath(si)}.ports[${pi}] has the named targetPort ${JSON.stringify(p.targetPort)}`);
      });
    }
    for (const f of ['ready', 'serving', 'terminating', 'nodeLocal']) c.bool(ep[f], `${ep_}.${f}`);
  }
  return c.count === before ? addrs : null;
}

/**
 * Validate an untrusted rule set. On success: the same object (never
 * modified) and its numeric model, defaults applied (control/model.ts).
 */
export function validateRuleSet(input: unknown): ValidationResult {
  const c = new Checker();
  if (!isObj(input)) return { ok: false, errors: [{ path: '(root)', message: `a rule set must be a JSON object, got ${describe(input)}` }] };
  c.fields(input, '', ROOT_FIELDS, ['apiVersion', 'node', 'services']);
  if (input.apiVersion !== undefined && input.apiVersion !== API_VERSION) c.err('apiVersion', `${describe(input.apiVersion)} is not supported (expected "${API_VERSION}")`);

  const beforeNode = c.count;
  // node
  let range: [number, number] = [30000, 32767];
  const node = input.node;
  if (node !== undefined && !isObj(node)) c.err('node', 'must be an object');
  if (isObj(node)) {
    c.fields(node, 'node', NODE_FIELDS, ['addresses']);
    if (node.name !== undefined && typeof node.name !== 'string') c.err('node.name', 'must be a string');
    if (node.addresses !== undefined) {
      c.ipList(node.addresses, 'node.addresses');
      if (Array.isArray(node.addresses) && node.addresses.length === 0) c.err('node.addresses', 'must list at least one address (what -m addrtype --dst-type LOCAL matches)');
    }
    if (node.masqueradeAddress !== undefined) c.pair(node.masqueradeAddress, 'node.masqueradeAddress', (x, p) => {
      const a = c.ip(x, p);
      return a < 0 ? 0 : familyOf(a);
    });
    if (node.clusterCIDR !== undefined) c.pair(node.clusterCIDR, 'node.clusterCIDR', (x, p) => c.cidr(x, p));
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

  // the model of the node, when the node is right (the services' models need it)
  const nm = isObj(node) && c.count === beforeNode ? nodeModel(input as unknown as RuleSet) : null;
  const nodeFams = nm === null ? 3 : nodeFamilies(nm);

  // services
  const services = input.services;
  if (services !== undefined && !Array.isArray(services)) c.err('services', 'must be an array');
  const models: ServiceModel[] = [];
  if (Array.isArray(services)) {
    if (services.length > MAX_SERVICES) c.err('services', `${services.length} services is more than ${MAX_SERVICES}`);
    const conflicts = nm === null ? null : new Conflicts(c, nm, null, services.length * 2);
    for (let si = 0; si < services.length; si++) {
      const addrs = checkService(c, services[si], si, range, nodeFams);
      if (addrs === null || nm === null) continue;
      const sm = serviceModel(services[si] as Service, nm, addrs);
      conflicts!.claim(sm, si);
      models.push(sm);
    }
  }
  if (c.count > 0) return { ok: false, errors: c.errors };
  const rs = input as unknown as RuleSet;
  return { ok: true, ruleSet: rs, model: new RuleSetModel(rs, nm!, models) };
}

/**
 * Validate the services of an incremental apply: `changed[k]` stands at
 * position `at[k]` of the new rule set, on the node of the model in force;
 * conflicts are checked among them and against `inForce`, the keys of the
 * services that stay. The same checks as validateRuleSet, the same errors.
 */
export function validateServices(node: NodeModel, changed: readonly unknown[], at: readonly number[], inForce: KeysInForce): { ok: true; services: ServiceModel[] } | { ok: false; errors: ValidationError[] } {
  const c = new Checker();
  const conflicts = new Conflicts(c, node, inForce);
  const out: ServiceModel[] = [];
  for (let k = 0; k < changed.length; k++) {
    const addrs = checkService(c, changed[k], at[k], node.nodePortRange, nodeFamilies(node));
    if (addrs === null) continue;
    const sm = serviceModel(changed[k] as Service, node, addrs);
    conflicts.claim(sm, at[k]);
    out.push(sm);
  }
  if (c.count > 0) return { ok: false, errors: c.errors };
  return { ok: true, services: out };
}

/** Validate or throw a RuleSetError listing every problem. */
export function parseRuleSet(input: unknown): RuleSet {
  const r = validateRuleSet(input);
  if (!r.ok) throw new RuleSetError(r.errors);
  return r.ruleSet;
}
