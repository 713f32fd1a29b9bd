/**
 * The rule set as kube-proxy sees it once defaults are applied: the numeric
 * model every later stage reads (compile, the incremental patch, the
 * iptables and nftables writers), built once by validation
 * (control/validate.ts) — kube-proxy's svcInfo/epInfo. One entry per service
 * port, with its endpoints sorted into the sets kube-proxy's
 * CategorizeEndpoints (pkg/proxy/topology.go) produces, so the compiler and
 * the writers agree by construction on which endpoints serve which traffic.
 *
 * Addresses. Every address of the model is an `Addr`: a number. An IPv4
 * address is its unsigned 32-bit value (0 ≤ a < 2^32, the fast path: a key
 * part, a typed-array element, compared with ===). An IPv6 address is a
 * number ≥ 2^32, `2^32 + i`, naming entry i of the process-wide address pool
 * `addr6` (four 32-bit words per address, network order), interned so that
 * equal addresses get equal numbers — in every model, so the model in force
 * and an incremental apply's services compare by ===. Everything that only
 * keys, compares or counts addresses (conflict checks, diffs) then works
 * unchanged; the few places that need the bits (compile, which puts the
 * words in the tables; the writers' text) branch on `isIPv6(a)`. The pool
 * only grows: 16 bytes per distinct IPv6 address ever seen (1 M addresses,
 * 16 MB), a price paid for numbers that stay valid across rule sets. The
 * address text of the input is kept beside the number for the writers (a
 * reference to the input's string, not a copy), so nothing formats it back.
 *
 * Families. kube-proxy runs one proxier per IP family (its meta-proxier):
 * each sees a dual-stack Service with its own family's ClusterIP and
 * endpoints only. The model does the same: a service port has one
 * ServicePortModel per family of the service (`ipFamilies` order), each
 * holding only that family's addresses, so every later stage reads one
 * family's view at a time.
 *
 * Loops. What runs once per service, port or endpoint on the way from a PUT
 * to the tables (here, validate.ts, compile.ts, runtime.ts, the wire
 * encoder) loops by index, not with for-of or callbacks over small arrays:
 * a fresh control worker runs those loops before V8 has optimized them, and
 * unoptimized for-of makes an iterator per loop. The first PUT of 10 000
 * services in a fresh process spent ~20 ms more with them (parse to encode,
 * 170 → 151 ms, medians of 11 on the Intel machine).
 */
import type { RuleSet, Service, ServicePort, Endpoint } from './types.ts';
import type { Cidr, ProtocolName } from '../dataplane/addr.ts';
import { parseCidr, parseIPv4, cidrContains, protocolNumber, formatIPv4 } from '../dataplane/addr.ts';
import type { Cidr6 } from '../dataplane/addr6.ts';
import { parseIPv6Into, formatIPv6, parseCidr6, cidr6Contains, looksIPv6, hostPort, hash4 } from '../dataplane/addr6.ts';

/** An address of the model: IPv4 as its uint32 value; IPv6 as 2^32 + its index in the pool `addr6`. */
export type Addr = number;
export const ADDR6_BASE = 2 ** 32;
export const isIPv6 = (a: Addr): boolean => a >= ADDR6_BASE;

export const FAMILY_IPV4 = 4;
export const FAMILY_IPV6 = 6;
/** An IP family: 4 or 6. */
export type Family = 4 | 6;
export const familyOf = (a: Addr): Family => (a >= ADDR6_BASE ? 6 : 4);
/** "IPv4" / "IPv6", as Kubernetes' ipFamilies spells them */
export const familyName = (f: Family): 'IPv4' | 'IPv6' => (f === 6 ? 'IPv6' : 'IPv4');

/**
 * The IPv6 address pool: interns IPv6 addresses to Addr numbers
 * (ADDR6_BASE + index), four words per address in one growing Uint32Array.
 */
export class Addr6Pool {
  #words = new Uint32Array(4 * 256);
  #count = 0;
  /** open addressing over the words: index + 1 per slot, 0 empty; at most half full */
  #slots = new Int32Array(512);
  readonly #tmp = new Uint32Array(4);

  /** how many distinct IPv6 addresses the pool holds */
  get size(): number {
    return this.#count;
  }

  /** The Addr of the address at w[off..off+4). */
  internWords(w: ArrayLike<number>, off = 0): Addr {
    const a = w[off] >>> 0, b = w[off + 1] >>> 0, c = w[off + 2] >>> 0, d = w[off + 3] >>> 0;
    const words = this.#words;
    let slots = this.#slots;
    let mask = slots.length - 1;
    let h = hash4(w, off) & mask;
    for (;;) {
      const s = slots[h];
      if (s === 0) break;
      const o = (s - 1) * 4;
      if (words[o + 3] === d && words[o] === a && words[o + 1] === b && words[o + 2] === c) return ADDR6_BASE + s - 1;
      h = (h + 1) & mask;
    }
    const i = this.#count++;
    if (i * 4 + 4 > words.length) {
      const grown = new Uint32Array(words.length * 2);
      grown.set(words);
      this.#words = grown;
    }
    const ws = this.#words;
    ws[i * 4] = a; ws[i * 4 + 1] = b; ws[i * 4 + 2] = c; ws[i * 4 + 3] = d;
    if ((i + 1) * 2 > slots.length) {
      // grow and insert every address again (this one included)
      slots = this.#slots = new Int32Array(slots.length * 2);
      mask = slots.length - 1;
      for (let k = 0; k <= i; k++) {
        let j = hash4(ws, k * 4) & mask;
        while (slots[j] !== 0) j = (j + 1) & mask;
        slots[j] = k + 1;
      }
    } else {
      slots[h] = i + 1;
    }
    return ADDR6_BASE + i;
  }

  /** The Addr of IPv6 text, or -1 when the text is not an IPv6 address. */
  intern(text: string): Addr {
    return parseIPv6Into(text, this.#tmp, 0) ? this.internWords(this.#tmp, 0) : -1;
  }

  /** Copy the four words of an IPv6 Addr into out[at..at+4) (no view made). */
  copyWords(a: Addr, out: Uint32Array, at: number): void {
    const i = a - ADDR6_BASE;
    if (!(i >= 0 && i < this.#count)) throw new RangeError(`${a} is not an IPv6 address of the pool`);
    const w = this.#words;
    out[at] = w[i * 4]; out[at + 1] = w[i * 4 + 1]; out[at + 2] = w[i * 4 + 2]; out[at + 3] = w[i * 4 + 3];
  }

  /** The four words of an IPv6 Addr (a view into the pool: read, do not keep across interning, do not write). */
  words(a: Addr): Uint32Array {
    const i = a - ADDR6_BASE;
    if (!(i >= 0 && i < this.#count)) throw new RangeError(`${a} is not an IPv6 address of the pool`);
    return this.#words.subarray(i * 4, i * 4 + 4);
  }

  /** RFC 5952 text of an IPv6 Addr. */
  text(a: Addr): string {
    return formatIPv6(this.words(a));
  }
}

/** The process-wide IPv6 address pool (see "Addresses" above). */
export const addr6 = new Addr6Pool();

/** An address of either family as an Addr, or -1 when the text is neither. */
export function parseAddr(text: string): Addr {
  const a = parseIPv4(text);
  if (a >= 0 || !looksIPv6(text)) return a;
  return addr6.intern(text);
}

/** The text of an Addr of either family (IPv6 in RFC 5952 form). */
export function formatAddr(a: Addr): string {
  return isIPv6(a) ? addr6.text(a) : formatIPv4(a);
}

/** Split kube-proxy's dual-stack form "a,b" (one per family) into its parts, trimmed. */
export function splitPair(text: string): string[] {
  return text.split(',').map((x) => x.trim());
}

export const DEFAULT_AFFINITY_SECONDS = 10800;
export const DEFAULT_MASQUERADE_MARK = '0x4000';
export const DEFAULT_NODEPORT_RANGE = '30000-32767';
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;

export interface NodeModel {
  name: string;
  addresses: string[];
  /** the node's addresses as numbers, both families */
  addrs: Addr[];
  /** the node's IPv4 addresses (what IPv4's addrtype LOCAL matches) */
  addrs4: Addr[];
  /** the node's IPv6 addresses, as pool numbers */
  addrs6: Addr[];
  /** IPv4 SNAT source ("0.0.0.0" when the node has no IPv4 address) */
  masqueradeAddress: string;
  masqueradeAddr: Addr;
  /** IPv6 SNAT source, null when the node has no IPv6 address */
  masqueradeAddress6: string | null;
  /** IPv6 SNAT source as a pool number, -1 when none */
  masqueradeAddr6: Addr;
  /** the IPv4 clusterCIDR text, or null */
  clusterCIDR: string | null;
  cidr: Cidr | null;
  /** the IPv6 clusterCIDR text (the second of kube-proxy's dual-stack pair, or the only one), or null */
  clusterCIDR6: string | null;
  cidr6: Cidr6 | null;
  masqueradeAll: boolean;
  /** "0x4000" */
  masqueradeMark: string;
  nodePortRange: [number, number];
  loadBalancing: 'random' | 'maglev';
  maglevTableSize: number;
}

export interface EndpointModel {
  address: string;
  addr: Addr;
  port: number;
  /** "10.64.1.7:53", "[fd00:10:64::7]:53" */
  text: string;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  nodeLocal: boolean;
}

export interface ServicePortModel {
  service: Service;
  port: ServicePort;
  /** the IP family of this view of the service port: 4 or 6 (a dual-stack port has one model per family) */
  family: Family;
  /** kube-proxy's service-port name: "ns/name:port", or "ns/name" for an unnamed port */
  name: string;
  protocol: ProtocolName;
  /** the IP protocol number (6, 17, 132) */
  protocolNumber: number;
  /** "tcp" | "udp" | "sctp", as in chain-name hashes and -p */
  proto: string;
  /** the service port (port.port) */
  portNumber: number;
  /** 0 when none */
  nodePort: number;
  clusterIP: string | null;
  /** -1 when headless */
  clusterAddr: Addr;
  externalIPs: string[];
  externalAddrs: Addr[];
  loadBalancerIPs: string[];
  loadBalancerAddrs: Addr[];
  /** the source ranges of this family, as given */
  loadBalancerSourceRanges: string[];
  /** family 4: the IPv4 source ranges (family 6: empty) */
  sourceRanges: Cidr[];
  /** family 6: the IPv6 source ranges (family 4: empty) */
  sourceRanges6: Cidr6[];
  /** ClientIP affinity timeout, 0 when sessionAffinity is None */
  affinitySeconds: number;
  internalPolicyLocal: boolean;
  /** externalTrafficPolicy Local on an externally accessible port */
  externalPolicyLocal: boolean;
  /** has a NodePort, external IPs or load-balancer IPs */
  externallyAccessible: boolean;
  /** endpoints that carry this port, in rule-set order */
  endpoints: EndpointModel[];
  /** KUBE-SVC- endpoints: ready ones, or serving+terminating when none is ready */
  clusterEndpoints: EndpointModel[];
  /** KUBE-SVL- endpoints: local ready ones, or local serving+terminating when none is ready */
  localEndpoints: EndpointModel[];
  /** endpoints that get a KUBE-SEP- chain */
  allReachableEndpoints: EndpointModel[];
  /** any usable endpoint anywhere (else: REJECT) */
  hasEndpoints: boolean;
  hasInternalEndpoints: boolean;
  hasExternalEndpoints: boolean;
  usesClusterPolicyChain: boolean;
  usesLocalPolicyChain: boolean;
  usesExternalTrafficChain: boolean;
  /** loadBalancerSourceRanges on a service with LB IPs and endpoints: KUBE-FW- chain */
  usesFirewallChain: boolean;
  /** a source range contains a node address: the LB IPs are also admitted as sources */
  allowFromNode: boolean;
}

/** One service of the rule set: its object and its service ports' models. */
export interface ServiceModel {
  service: Service;
  /** "ns/name" */
  key: string;
  ports: ServicePortModel[];
}

/**
 * The model of a whole rule set. `services` follows the rule set's order;
 * `ports` is every service port in that order (made on first use, so that
 * the incremental path, which builds a model by replacing a few services,
 * does not pay for it).
 */
export class RuleSetModel {
  readonly ruleSet: RuleSet;
  readonly node: NodeModel;
  readonly services: readonly ServiceModel[];
  #ports: ServicePortModel[] | null = null;
  #ports4: ServicePortModel[] | null = null;
  constructor(ruleSet: RuleSet, node: NodeModel, services: readonly ServiceModel[]) {
    this.ruleSet = ruleSet;
    this.node = node;
    this.services = services;
  }
  get ports(): ServicePortModel[] {
    if (this.#ports === null) {
      const out: ServicePortModel[] = [];
      const services = this.services;
      for (let i = 0; i < services.length; i++) {
        const ports = services[i].ports;
        for (let j = 0; j < ports.length; j++) out.push(ports[j]);
      }
      this.#ports = out;
    }
    return this.#ports;
  }
  /** The service ports of one family (the whole `ports` when the rule set has only that family). */
  portsOf(family: Family): ServicePortModel[] {
    const all = this.ports;
    if (family === 4) {
      if (this.#ports4 === null) this.#ports4 = portsOfFamily(all, 4);
      return this.#ports4;
    }
    return all.filter((p) => p.family === 6);
  }
}

/** The service ports of one family among services' models (the array itself when all are of that family). */
export function portsOfFamily(ports: ServicePortModel[], family: Family): ServicePortModel[] {
  let i = 0;
  while (i < ports.length && ports[i].family === family) i++;
  return i === ports.length ? ports : ports.filter((p) => p.family === family);
}

export function isRuleSetModel(x: RuleSet | RuleSetModel): x is RuleSetModel {
  return x instanceof RuleSetModel;
}

/** The model of a rule set already validated, or the model itself. */
export function modelOf(x: RuleSet | RuleSetModel): RuleSetModel {
  return x instanceof RuleSetModel ? x : ruleSetModel(x);
}

export function servicePortName(svc: Service, port: ServicePort): string {
  return `${svc.namespace}/${svc.name}${port.name ? ':' + port.name : ''}`;
}

/** The node's settings with defaults applied (input assumed validated). */
export function nodeModel(rs: RuleSet): NodeModel {
  const n = rs.node;
  let cidrText: string | null = null;
  let cidr6Text: string | null = null;
  for (const c of n.clusterCIDR ? splitPair(n.clusterCIDR) : []) {
    if (looksIPv6(c)) cidr6Text = c;
    else cidrText = c;
  }
  const cidr = cidrText ? parseCidr(cidrText) : null;
  const cidr6 = cidr6Text ? parseCidr6(cidr6Text) : null;
  const addrs = n.addresses.map(parseAddr);
  const addrs4 = addrs.filter((a) => !isIPv6(a));
  const addrs6 = addrs.filter(isIPv6);
  let masq: string | undefined;
  let masq6: string | undefined;
  for (const m of n.masqueradeAddress ? splitPair(n.masqueradeAddress) : []) {
    if (looksIPv6(m)) masq6 = m;
    else masq = m;
  }
  // default: the first node address of the family inside the clusterCIDR of that family, else the first of that family
  if (!masq) {
    const i = addrs.findIndex((a) => !isIPv6(a) && cidr !== null && cidrContains(cidr, a));
    const j = i >= 0 ? i : addrs.findIndex((a) => !isIPv6(a));
    masq = j >= 0 ? n.addresses[j] : '0.0.0.0';
  }
  if (!masq6) {
    const i = addrs.findIndex((a) => isIPv6(a) && cidr6 !== null && cidr6Contains(cidr6, addr6.words(a)));
    const j = i >= 0 ? i : addrs.findIndex(isIPv6);
    masq6 = j >= 0 ? n.addresses[j] : undefined;
  }
  const range = (n.nodePortRange ?? DEFAULT_NODEPORT_RANGE).split('-').map(Number) as [number, number];
  return {
    name: n.name ?? '',
    addresses: n.addresses,
    addrs,
    addrs4,
    addrs6,
    masqueradeAddress: masq,
    masqueradeAddr: parseIPv4(masq),
    masqueradeAddress6: masq6 ?? null,
    masqueradeAddr6: masq6 === undefined ? -1 : addr6.intern(masq6),
    clusterCIDR: cidrText,
    cidr,
    clusterCIDR6: cidr6Text,
    cidr6,
    masqueradeAll: n.masqueradeAll ?? false,
    masqueradeMark: n.masqueradeMark ?? DEFAULT_MASQUERADE_MARK,
    nodePortRange: range,
    loadBalancing: n.loadBalancing ?? 'random',
    maglevTableSize: n.maglevTableSize ?? DEFAULT_MAGLEV_TABLE_SIZE,
  };
}

function endpointPort(ep: Endpoint, port: ServicePort): number {
  if (ep.ports) return ep.ports[port.name] ?? -1;
  return typeof port.targetPort === 'number' ? port.targetPort : port.targetPort === undefined ? port.port : -1;
}

/**
 * An endpoint of a service port. Its text ("10.64.1.7:53") is made when first
 * read: only the writers, Maglev and trace read it, and a PUT of 10 000
 * services with 3 endpoints each made 30 000 strings for nothing (10 ms of a
 * cold first PUT in a profile). The cache is a private field, so the object's
 * own fields are the same whether or not the text was read.
 */
class EndpointOfPort implements EndpointModel {
  readonly address: string;
  readonly addr: Addr;
  readonly port: number;
  /** ready, serving, terminating and nodeLocal as bits (EP_*): one field for four, 24 bytes less per endpoint of a port */
  readonly #bits: number;
  #text: string | null = null;
  constructor(ep: Endpoint, addr: Addr, port: number) {
    const ready = ep.ready ?? true;
    this.address = ep.address;
    this.addr = addr;
    this.port = port;
    this.#bits = (ready ? EP_READY : 0) | ((ep.serving ?? ready) ? EP_SERVING : 0) | (ep.terminating === true ? EP_TERMINATING : 0) | (ep.nodeLocal === true ? EP_NODE_LOCAL : 0);
  }
  get ready(): boolean {
    return (this.#bits & EP_READY) !== 0;
  }
  get serving(): boolean {
    return (this.#bits & EP_SERVING) !== 0;
  }
  get terminating(): boolean {
    return (this.#bits & EP_TERMINATING) !== 0;
  }
  get nodeLocal(): boolean {
    return (this.#bits & EP_NODE_LOCAL) !== 0;
  }
  get text(): string {
    return (this.#text ??= hostPort(this.address, this.port));
  }
}
const EP_READY = 1;
const EP_SERVING = 2;
const EP_TERMINATING = 4;
const EP_NODE_LOCAL = 8;

const LOWER: Record<ProtocolName, string> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };
const NO_ADDRS: Addr[] = [];
const NO_STRINGS: string[] = [];
const NO_CIDRS: Cidr[] = [];
const NO_CIDRS6: Cidr6[] = [];
const NO_ENDPOINTS: EndpointModel[] = [];
const ONLY_IPV4: readonly Family[] = Object.freeze([4] as Family[]);
const ONLY_IPV6: readonly Family[] = Object.freeze([6] as Family[]);

/** The addresses of one family among texts (and their numbers): the same arrays when all are of that family. */
const NO_FAMILY_ADDRS: { texts: string[]; addrs: Addr[] } = Object.freeze({ texts: NO_STRINGS, addrs: NO_ADDRS }) as { texts: string[]; addrs: Addr[] };

function ofFamily(texts: string[], family: Family): { texts: string[]; addrs: Addr[] } {
  if (texts.length === 0) return NO_FAMILY_ADDRS;
  const addrs = texts.map(parseAddr);
  let all = true;
  for (let i = 0; i < addrs.length; i++) if (familyOf(addrs[i]) !== family) all = false;
  if (all) return { texts, addrs };
  const t: string[] = [];
  const a: Addr[] = [];
  for (let i = 0; i < addrs.length; i++) if (familyOf(addrs[i]) === family) (t.push(texts[i]), a.push(addrs[i]));
  return { texts: t, addrs: a };
}

/**
 * The IP families of a service, in order: `ipFamilies` when given, else the
 * families of `clusterIPs` (or `clusterIP`), else — a headless service
 * without ipFamilies — the families its addresses have (IPv4 first), IPv4
 * when it has none. Input assumed validated.
 */
export function serviceFamilies(svc: Service): readonly Family[] {
  if (svc.ipFamilies !== undefined && svc.ipFamilies.length > 0) return svc.ipFamilies.map((f) => (f === 'IPv6' ? 6 : 4));
  // the common case, one clusterIP: no array made
  if ((svc.clusterIPs === undefined || svc.clusterIPs.length === 0) && svc.clusterIP !== undefined && svc.clusterIP !== 'None') return looksIPv6(svc.clusterIP) ? ONLY_IPV6 : ONLY_IPV4;
  const ips = svc.clusterIPs !== undefined && svc.clusterIPs.length > 0 ? svc.clusterIPs : svc.clusterIP !== undefined ? [svc.clusterIP] : [];
  if (ips.length > 0 && ips[0] !== 'None') return ips.map((ip) => (looksIPv6(ip) ? 6 : 4));
  let v4 = false;
  let v6 = false;
  const see = (t: string): void => {
    if (looksIPv6(t)) v6 = true;
    else v4 = true;
  };
  for (const e of svc.endpoints ?? []) see(e.address);
  for (const t of svc.externalIPs ?? []) see(t);
  for (const t of svc.loadBalancerIPs ?? []) see(t);
  if (!v6) return ONLY_IPV4;
  return v4 ? [4, 6] : [6];
}

/** The service's ClusterIP of one family (text), or null (headless, or none of that family). */
export function clusterIPOf(svc: Service, family: Family): string | null {
  if (svc.clusterIPs === undefined || svc.clusterIPs.length === 0) {
    const ip = svc.clusterIP;
    return ip !== undefined && ip !== 'None' && (looksIPv6(ip) ? 6 : 4) === family ? ip : null;
  }
  const ips = svc.clusterIPs !== undefined && svc.clusterIPs.length > 0 ? svc.clusterIPs : svc.clusterIP !== undefined ? [svc.clusterIP] : [];
  for (const ip of ips) if (ip !== 'None' && (looksIPv6(ip) ? 6 : 4) === family) return ip;
  return null;
}

/**
 * One service port as kube-proxy's syncProxyRules of one family's proxier
 * sees it. `epAddrs`: the endpoints' addresses as numbers when the caller has
 * them (validation parsed them already), else they are parsed here.
 */
export function servicePortModel(svc: Service, port: ServicePort, node: NodeModel, epAddrs?: readonly Addr[], family: Family = 4, name: string = servicePortName(svc, port)): ServicePortModel {
  const clusterIP = clusterIPOf(svc, family);
  const ext = ofFamily(svc.externalIPs ?? NO_STRINGS, family);
  const lb = ofFamily(svc.loadBalancerIPs ?? NO_STRINGS, family);
  const externalIPs = ext.texts;
  const loadBalancerIPs = lb.texts;
  const allRanges = svc.loadBalancerSourceRanges ?? NO_STRINGS;
  const ranges = allRanges.length === 0 || allRanges.every((r) => looksIPv6(r) === (family === 6)) ? allRanges : allRanges.filter((r) => looksIPv6(r) === (family === 6));
  const nodePort = port.nodePort ?? 0;
  const externallyAccessible = nodePort !== 0 || externalIPs.length > 0 || loadBalancerIPs.length > 0;
  const internalPolicyLocal = svc.internalTrafficPolicy === 'Local';
  const externalPolicyLocal = externallyAccessible && svc.externalTrafficPolicy === 'Local';
  const usesCluster = !internalPolicyLocal || externallyAccessible;
  const usesLocal = internalPolicyLocal || externalPolicyLocal;

  // made at its final size (an array grown by push from empty holds room for 16): a PUT makes one per service port
  let endpoints: EndpointModel[] = NO_ENDPOINTS;
  const eps = svc.endpoints;
  if (eps !== undefined && eps.length > 0) {
    endpoints = new Array(eps.length);
    let k = 0;
    for (let i = 0; i < eps.length; i++) {
      const ep = eps[i];
      const p = endpointPort(ep, port);
      if (p <= 0) continue;
      const a = epAddrs !== undefined ? epAddrs[i] : parseAddr(ep.address);
      if (familyOf(a) === family) endpoints[k++] = new EndpointOfPort(ep, a, p);
    }
    if (k === 0) endpoints = NO_ENDPOINTS;
    else if (k < eps.length) endpoints.length = k;
  }

  // pkg/proxy/topology.go CategorizeEndpoints (without topology hints)
  let clusterEndpoints: EndpointModel[] = NO_ENDPOINTS;
  let localEndpoints: EndpointModel[] = NO_ENDPOINTS;
  let hasAny = false;
  if (usesCluster) {
    let ready = 0;
    for (let i = 0; i < endpoints.length; i++) if (endpoints[i].ready) ready++;
    clusterEndpoints = ready === endpoints.length ? endpoints : ready > 0 ? endpoints.filter((e) => e.ready) : endpoints.filter((e) => e.serving && e.terminating);
    if (clusterEndpoints.length > 0) hasAny = true;
  }
  let allReachable: EndpointModel[];
  if (!usesLocal) {
    allReachable = clusterEndpoints;
  } else {
    let localReady = false;
    let localServingTerminating = false;
    for (let i = 0; i < endpoints.length; i++) {
      const e = endpoints[i];
      if (e.ready) {
        hasAny = true;
        if (e.nodeLocal) localReady = true;
      } else if (e.serving && e.terminating) {
        hasAny = true;
        if (e.nodeLocal) localServingTerminating = true;
      }
    }
    if (localReady) localEndpoints = endpoints.filter((e) => e.nodeLocal && e.ready);
    else if (localServingTerminating) localEndpoints = endpoints.filter((e) => e.nodeLocal && e.serving && e.terminating);
    if (!usesCluster) allReachable = localEndpoints;
    else {
      const seen = new Set(clusterEndpoints);
      allReachable = [...clusterEndpoints, ...localEndpoints.filter((e) => !seen.has(e))];
    }
  }

  const hasEndpoints = hasAny;
  const hasInternalEndpoints = internalPolicyLocal ? hasEndpoints && localEndpoints.length > 0 : hasEndpoints;
  const hasExternalEndpoints = externalPolicyLocal ? hasEndpoints && localEndpoints.length > 0 : hasEndpoints;
  const sourceRanges = family === 6 || ranges.length === 0 ? NO_CIDRS : ranges.map((r) => parseCidr(r)!);
  const sourceRanges6 = family === 4 || ranges.length === 0 ? NO_CIDRS6 : ranges.map((r) => parseCidr6(r)!);
  const allowFromNode =
    ranges.length > 0 &&
    (family === 4
      ? sourceRanges.some((c) => node.addrs4.some((a) => cidrContains(c, a)))
      : sourceRanges6.some((c) => node.addrs6.some((a) => cidr6Contains(c, addr6.words(a)))));
  return {
    service: svc,
    port,
    family,
    name,
    protocol: port.protocol,
    protocolNumber: protocolNumber(port.protocol),
    proto: LOWER[port.protocol],
    portNumber: port.port,
    nodePort,
    clusterIP,
    clusterAddr: clusterIP === null ? -1 : parseAddr(clusterIP),
    externalIPs,
    externalAddrs: ext.addrs,
    loadBalancerIPs,
    loadBalancerAddrs: lb.addrs,
    loadBalancerSourceRanges: ranges,
    sourceRanges,
    sourceRanges6,
    affinitySeconds: svc.sessionAffinity === 'ClientIP' ? (svc.sessionAffinityTimeoutSeconds ?? DEFAULT_AFFINITY_SECONDS) : 0,
    internalPolicyLocal,
    externalPolicyLocal,
    externallyAccessible,
    endpoints,
    clusterEndpoints,
    localEndpoints,
    allReachableEndpoints: allReachable,
    hasEndpoints,
    hasInternalEndpoints,
    hasExternalEndpoints,
    usesClusterPolicyChain: clusterEndpoints.length > 0 && usesCluster,
    usesLocalPolicyChain: localEndpoints.length > 0 && usesLocal,
    usesExternalTrafficChain: hasEndpoints && externallyAccessible,
    usesFirewallChain: hasEndpoints && loadBalancerIPs.length > 0 && ranges.length > 0,
    allowFromNode,
  };
}

/** One service's model (input assumed validated): its ports, once per family of the service, in ipFamilies order. */
export function serviceModel(svc: Service, node: NodeModel, epAddrs?: readonly Addr[]): ServiceModel {
  const fams = serviceFamilies(svc);
  const n = svc.ports.length;
  const ports: ServicePortModel[] = new Array(n * fams.length);
  const key = `${svc.namespace}/${svc.name}`;
  for (let i = 0; i < n; i++) {
    // servicePortName's text from the key made once (fewer strings made per PUT), the same for both families
    const p = svc.ports[i];
    const name = p.name ? key + ':' + p.name : key;
    for (let f = 0; f < fams.length; f++) ports[f * n + i] = servicePortModel(svc, p, node, epAddrs, fams[f], name);
  }
  return { service: svc, key, ports };
}

/** The model of a rule set already validated (validateRuleSet builds it as it checks; this is for rule sets known good). */
export function ruleSetModel(rs: RuleSet): RuleSetModel {
  const node = nodeModel(rs);
  const services: ServiceModel[] = new Array(rs.services.length);
  for (let i = 0; i < rs.services.length; i++) services[i] = serviceModel(rs.services[i], node);
  return new RuleSetModel(rs, node, services);
}
