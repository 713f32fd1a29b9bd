/**
 * The output of `kubectl get services,endpointslices -A -o json` (a v1 List
 * of Service and discovery.k8s.io/v1 EndpointSlice items; `-o yaml` too) →
 * a rule set, read the way kube-proxy reads those objects:
 *
 * - Services: ClusterIPs of both families (spec.clusterIPs, spec.ipFamilies,
 *   spec.ipFamilyPolicy: a dual-stack service keeps all three), ports (name,
 *   protocol, port, targetPort, nodePort for NodePort/LoadBalancer),
 *   externalIPs, status.loadBalancer.ingress[].ip (LoadBalancer; ipMode Proxy
 *   left out as kube-proxy does), loadBalancerSourceRanges, sessionAffinity
 *   and its timeout, external/internalTrafficPolicy. ExternalName and
 *   headless services get no proxy rules (kube-proxy skips them): skipped.
 *   Addresses and ranges of a family the service has no ClusterIP of are left
 *   out (a warning): kube-proxy's proxier of that family does not see the
 *   service.
 * - EndpointSlices (addressType IPv4 or IPv6; a slice of a family the
 *   service does not have is left out, as kube-proxy does), joined to their service by the
 *   kubernetes.io/service-name label: the first address of each endpoint,
 *   its ready/serving/terminating conditions (nil ready = true, nil serving
 *   = ready), the port per service-port name, nodeLocal when nodeName is
 *   this node (`nodeName` option).
 * - Node items (kubectl get nodes,services,endpointslices): this node's
 *   InternalIP/ExternalIP addresses (both families) become node.addresses when none are given.
 *
 * Nothing is dropped silently: an object that cannot be read is in
 * `notUnderstood` with its line in the text and the reason; an object that
 * kube-proxy itself would ignore is in `skipped`, also with its line.
 */
import { parseDocument, LineCounter, isMap, isSeq } from 'yaml';
import type { Node as YamlNode } from 'yaml';
import type { Endpoint, RuleSet, Service, ServicePort } from './types.ts';
import { API_VERSION } from './types.ts';
import { validateRuleSet } from './validate.ts';
import { parseCidr, parseIPv4 } from '../dataplane/addr.ts';
import { parseIPv6, parseCidr6 } from '../dataplane/addr6.ts';
import { jsonErrorOffset } from './json-error.ts';

export interface KubernetesImportOptions {
  /** this node's name: endpoints whose nodeName equals it are node-local; picks the Node item */
  nodeName?: string;
  /** the node's addresses (what NodePorts answer on); default: the Node item's, else none (a warning) */
  nodeAddresses?: string[];
  /** kube-proxy's --cluster-cidr */
  clusterCIDR?: string;
  masqueradeAddress?: string;
  nodePortRange?: string;
  /** called every `progressEvery` objects (default 1000) and at the end */
  onProgress?: (done: number, total: number) => void;
  progressEvery?: number;
}

export interface ObjectNote {
  /** 1-based line of the object in the text (0 when unknown) */
  line: number;
  /** "Service default/web", "EndpointSlice default/web-abc12", "item 7" */
  object: string;
  reason: string;
}

export interface KubernetesImportResult {
  ruleSet: RuleSet;
  /** objects that could not be read (or were refused by the rule-set validator) */
  notUnderstood: ObjectNote[];
  /** objects kube-proxy writes no rules for (ExternalName, headless, FQDN slices, other nodes) */
  skipped: ObjectNote[];
  warnings: string[];
  /** objects read */
  objects: number;
}

/** The text cannot be imported at all (not JSON/YAML, not a List or Kubernetes object). */
export class KubernetesImportError extends Error {
  readonly line: number;
  constructor(message: string, line = 0) {
    super(message);
    this.name = 'KubernetesImportError';
    this.line = line;
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const isV4 = (a: unknown): a is string => typeof a === 'string' && parseIPv4(a) >= 0;
const isV6 = (a: unknown): a is string => typeof a === 'string' && a.includes(':') && parseIPv6(a) !== null;
/** the family of an address text, or 0 when it is neither */
const familyOfText = (a: unknown): 0 | 4 | 6 => (isV4(a) ? 4 : isV6(a) ? 6 : 0);
const FAMILY_NAME = { 4: 'IPv4', 6: 'IPv6' } as const;
/** the IP families a converted service has (its ClusterIPs') */
export function serviceFamiliesOf(svc: Service): (4 | 6)[] {
  const ips = svc.clusterIPs ?? (svc.clusterIP !== undefined ? [svc.clusterIP] : []);
  return ips.map((ip) => (ip.includes(':') ? 6 : 4));
}
const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

// ---------------------------------------------------------------- reading the text with line numbers

/**
 * Offsets of the elements of the root object's "items" array in JSON text
 * (one linear pass over the characters; strings are skipped with their escapes).
 */
export function jsonItemOffsets(text: string): number[] {
  const out: number[] = [];
  let depth = 0;
  let i = 0;
  const n = text.length;
  let lastKey: string | null = null;
  let itemsDepth = -1; // depth of the items array's elements, while inside it
  let expectValue = false;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 0x5c) i += 2;
        else if (d === 0x22) break;
        else i++;
      }
      if (expectValue && depth === itemsDepth) out.push(start);
      expectValue = false;
      if (depth === 1) {
        // a key of the root object when a ':' follows
        let j = i + 1;
        while (j < n && (text.charCodeAt(j) === 0x20 || text.charCodeAt(j) === 0x0a || text.charCodeAt(j) === 0x0d || text.charCodeAt(j) === 0x09)) j++;
        if (text.charCodeAt(j) === 0x3a) lastKey = text.slice(start + 1, i);
      }
      i++;
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (expectValue && depth === itemsDepth) out.push(i);
      expectValue = false;
      depth++;
      if (c === 0x5b && depth === 2 && lastKey === 'items' && itemsDepth < 0) {
        itemsDepth = 2;
        expectValue = true;
      }
      i++;
      continue;
    }
    if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      if (c === 0x5d && depth === itemsDepth) itemsDepth = -2; // the items array ended: no more
      depth--;
      expectValue = false;
      i++;
      continue;
    }
    if (c === 0x2c /* , */) {
      if (depth === itemsDepth) expectValue = true;
      i++;
      continue;
    }
    if (c > 0x20 && expectValue && depth === itemsDepth) {
      out.push(i); // a scalar item
      expectValue = false;
    }
    i++;
  }
  return out;
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
  return starts;
}

function lineOf(starts: number[], offset: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

/** Parse the text (JSON or YAML) into the document and the 1-based line of each item. */
export function parseKubernetesText(text: string): { doc: unknown; itemLines: number[] } {
  const trimmed = text.trimStart();
  if (trimmed === '') throw new KubernetesImportError('the input is empty: expected the output of kubectl get services,endpointslices -A -o json');
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      const off = jsonErrorOffset(text);
      const line = off >= 0 ? lineOf(lineStarts(text), off) : 0;
      throw new KubernetesImportError(`not valid JSON${line ? ` (line ${line})` : ''}: ${(e as Error).message}`, line);
    }
    const starts = lineStarts(text);
    const itemLines = jsonItemOffsets(text).map((o) => lineOf(starts, o));
    return { doc, itemLines };
  }
  const lc = new LineCounter();
  const ydoc = parseDocument(text, { lineCounter: lc, prettyErrors: true });
  if (ydoc.errors.length > 0) {
    const e = ydoc.errors[0];
    const line = e.linePos?.[0]?.line ?? 0;
    throw new KubernetesImportError(`not valid JSON or YAML${line ? ` (line ${line})` : ''}: ${e.message.split('\n')[0]}`, line);
  }
  const doc = ydoc.toJS({ maxAliasCount: 1000 });
  const itemLines: number[] = [];
  const contents = ydoc.contents;
  if (isMap(contents)) {
    const items = contents.get('items', true) as YamlNode | undefined;
    if (items && isSeq(items)) {
      for (const it of items.items) {
        const range = (it as YamlNode | null)?.range;
        itemLines.push(range ? lc.linePos(range[0]).line : 0);
      }
    }
  }
  return { doc, itemLines };
}

// ---------------------------------------------------------------- one service: the conversion shared by the importer and the agent

/**
 * What one Service object, with its EndpointSlices, becomes in a rule set. The kubectl importer
 * (below) and the node agent fed by the API server (control/kube/) both convert with these
 * functions, so a cluster reads the same either way.
 */
export interface ConvertedService {
  service: Service;
  /** port name → protocol */
  portProtocols: Map<string, string>;
  /** address → endpoint, merged across slices */
  endpoints: Map<string, Endpoint>;
}

export type ServiceVerdict = { ok: ConvertedService } | { skip: string } | { bad: string };

/** kube-proxy leaves out services with this label: another proxy serves them. */
export const SERVICE_PROXY_NAME_LABEL = 'service.kubernetes.io/service-proxy-name';

/**
 * A Service object (already known to have a namespace and name) → a rule-set service without
 * endpoints; or why kube-proxy writes no rules for it (`skip`); or why it cannot be read (`bad`).
 * `where` prefixes the warnings ("Service default/web (line 12)").
 */
export function convertService(o: Obj, ns: string, name: string, where: string, warn: (msg: string) => void): ServiceVerdict {
  const spec = isObj(o.spec) ? o.spec : null;
  if (spec === null) return { bad: 'no spec' };
  const meta = isObj(o.metadata) ? o.metadata : {};
  const labels = isObj(meta.labels) ? meta.labels : {};
  const proxyName = labels[SERVICE_PROXY_NAME_LABEL];
  if (proxyName !== undefined) return { skip: `labelled ${SERVICE_PROXY_NAME_LABEL}=${String(proxyName)}: served by another proxy, as kube-proxy leaves it` };
  const type = str(spec.type) ?? 'ClusterIP';
  if (type === 'ExternalName') return { skip: 'an ExternalName service (a DNS name): kube-proxy writes no rules for it' };
  if (!['ClusterIP', 'NodePort', 'LoadBalancer'].includes(type)) return { bad: `spec.type ${JSON.stringify(type)} is not ClusterIP, NodePort, LoadBalancer or ExternalName` };
  const ips = Array.isArray(spec.clusterIPs) && spec.clusterIPs.length > 0 ? spec.clusterIPs : spec.clusterIP !== undefined ? [spec.clusterIP] : [];
  if (ips.length === 0 || ips[0] === 'None' || ips[0] === '') return { skip: 'a headless service (clusterIP None): kube-proxy writes no rules for it' };
  const families: (4 | 6)[] = [];
  for (const [i, ip] of ips.entries()) {
    const f = familyOfText(ip);
    if (f === 0) return { bad: `spec.clusterIPs[${i}] ${JSON.stringify(ip)} is not an IPv4 or IPv6 address` };
    if (families.includes(f)) return { bad: `spec.clusterIPs ${JSON.stringify(ips)}: two ${FAMILY_NAME[f]} addresses` };
    families.push(f);
  }
  if (ips.length > 2) return { bad: `spec.clusterIPs ${JSON.stringify(ips)}: more than one per family` };
  if (Array.isArray(spec.ipFamilies) && spec.ipFamilies.length > 0) {
    const want = families.map((f) => FAMILY_NAME[f]);
    if (spec.ipFamilies.length !== want.length || spec.ipFamilies.some((f, i) => f !== want[i])) {
      return { bad: `spec.ipFamilies ${JSON.stringify(spec.ipFamilies)} do not match spec.clusterIPs ${JSON.stringify(ips)}` };
    }
  }
  const policy = spec.ipFamilyPolicy;
  if (policy !== undefined && policy !== null && policy !== 'SingleStack' && policy !== 'PreferDualStack' && policy !== 'RequireDualStack') {
    return { bad: `spec.ipFamilyPolicy ${JSON.stringify(policy)} is not SingleStack, PreferDualStack or RequireDualStack` };
  }
  const clusterIP = ips[0] as string;
  const rawPorts = Array.isArray(spec.ports) ? spec.ports : [];
  if (rawPorts.length === 0) return { bad: 'spec.ports is empty: a service with a ClusterIP needs at least one port' };
  const ports: ServicePort[] = [];
  const portProtocols = new Map<string, string>();
  const externallyReachable = type === 'NodePort' || type === 'LoadBalancer';
  for (let i = 0; i < rawPorts.length; i++) {
    const p = rawPorts[i];
    if (!isObj(p)) return { bad: `spec.ports[${i}] is not an object` };
    const protocol = p.protocol === undefined ? 'TCP' : p.protocol;
    if (protocol !== 'TCP' && protocol !== 'UDP' && protocol !== 'SCTP') return { bad: `spec.ports[${i}].protocol ${JSON.stringify(protocol)} is not TCP, UDP or SCTP` };
    if (typeof p.port !== 'number' || !Number.isInteger(p.port) || p.port < 1 || p.port > 65535) return { bad: `spec.ports[${i}].port ${JSON.stringify(p.port)} is not a port number` };
    const portName = p.name === undefined || p.name === null ? '' : p.name;
    if (typeof portName !== 'string') return { bad: `spec.ports[${i}].name must be a string` };
    const sp: ServicePort = { name: portName, protocol, port: p.port };
    if (typeof p.targetPort === 'number' || typeof p.targetPort === 'string') sp.targetPort = p.targetPort;
    else if (p.targetPort !== undefined && p.targetPort !== null) return { bad: `spec.ports[${i}].targetPort ${JSON.stringify(p.targetPort)} is not a port number or name` };
    if (externallyReachable && typeof p.nodePort === 'number' && p.nodePort !== 0) sp.nodePort = p.nodePort;
    ports.push(sp);
    portProtocols.set(portName, protocol);
  }
  const svc: Service = { namespace: ns, name, clusterIP, ports };
  if (ips.length === 2) {
    // dual-stack: both families' ClusterIPs, the primary first
    svc.clusterIPs = ips as string[];
    svc.ipFamilies = families.map((f) => FAMILY_NAME[f]);
    svc.ipFamilyPolicy = policy === 'PreferDualStack' ? 'PreferDualStack' : 'RequireDualStack';
  }
  /** an address of a family the service has no ClusterIP of: that family's proxier does not see the service */
  const otherFamily = (field: string, a: string, f: 4 | 6) =>
    warn(`${where}: ${field} ${a} is ${FAMILY_NAME[f]} but the service has no ${FAMILY_NAME[f]} ClusterIP (kube-proxy's ${FAMILY_NAME[f]} proxier does not see it); left out`);
  const ipList = (field: string, v: unknown): string[] => {
    if (!Array.isArray(v)) return [];
    const out: string[] = [];
    for (const a of v) {
      const f = familyOfText(a);
      if (f === 0) warn(`${where}: ${field} ${JSON.stringify(a)} is not an IPv4 or IPv6 address; left out`);
      else if (!families.includes(f)) otherFamily(field, a as string, f);
      else if (!out.includes(a as string)) out.push(a as string);
    }
    return out;
  };
  const externalIPs = ipList('spec.externalIPs', spec.externalIPs);
  if (externalIPs.length > 0) svc.externalIPs = externalIPs;
  if (type === 'LoadBalancer') {
    const st = isObj(o.status) && isObj(o.status.loadBalancer) ? o.status.loadBalancer : {};
    const lb: string[] = [];
    for (const ing of Array.isArray(st.ingress) ? st.ingress : []) {
      if (!isObj(ing)) continue;
      if (ing.ipMode === 'Proxy') {
        warn(`${where}: load-balancer IP ${ing.ip} has ipMode Proxy: kube-proxy writes no rules for it; left out`);
        continue;
      }
      if (ing.ip === undefined || ing.ip === null) {
        if (ing.hostname !== undefined && ing.hostname !== null) warn(`${where}: load-balancer ingress by hostname ${JSON.stringify(ing.hostname)} has no rules; left out`);
        continue;
      }
      const f = familyOfText(ing.ip);
      if (f === 0) warn(`${where}: load-balancer IP ${JSON.stringify(ing.ip)} is not an IPv4 or IPv6 address; left out`);
      else if (!families.includes(f)) otherFamily('load-balancer IP', ing.ip as string, f);
      else if (!lb.includes(ing.ip as string)) lb.push(ing.ip as string);
    }
    if (lb.length > 0) svc.loadBalancerIPs = lb;
    const ranges: string[] = [];
    for (const r of Array.isArray(spec.loadBalancerSourceRanges) ? spec.loadBalancerSourceRanges : []) {
      const text = typeof r === 'string' ? r.trim() : '';
      const f = text.includes(':') ? (parseCidr6(text) ? 6 : 0) : parseCidr(text) ? 4 : 0;
      if (f === 0) warn(`${where}: loadBalancerSourceRanges ${JSON.stringify(r)} is not an IPv4 or IPv6 CIDR; left out`);
      else if (!families.includes(f)) otherFamily('loadBalancerSourceRanges', text, f);
      else ranges.push(text);
    }
    if (ranges.length > 0) svc.loadBalancerSourceRanges = ranges;
  }
  if (spec.sessionAffinity === 'ClientIP') {
    svc.sessionAffinity = 'ClientIP';
    const cfg = isObj(spec.sessionAffinityConfig) && isObj(spec.sessionAffinityConfig.clientIP) ? spec.sessionAffinityConfig.clientIP : {};
    if (typeof cfg.timeoutSeconds === 'number') svc.sessionAffinityTimeoutSeconds = cfg.timeoutSeconds;
  } else if (spec.sessionAffinity !== undefined && spec.sessionAffinity !== null && spec.sessionAffinity !== 'None') {
    return { bad: `spec.sessionAffinity ${JSON.stringify(spec.sessionAffinity)} is not None or ClientIP` };
  }
  for (const f of ['externalTrafficPolicy', 'internalTrafficPolicy'] as const) {
    const v = spec[f];
    if (v === undefined || v === null) continue;
    // "Cluster"/"Local"; the pre-1.22 external value "Global" meant Cluster
    if (v === 'Local') svc[f] = 'Local';
    else if (v !== 'Cluster' && !(f === 'externalTrafficPolicy' && v === 'Global')) return { bad: `spec.${f} ${JSON.stringify(v)} is not Cluster or Local` };
  }
  return { ok: { service: svc, portProtocols, endpoints: new Map() } };
}

/** The service an EndpointSlice belongs to ("ns/name"), or why it is skipped / not understood. */
export function sliceServiceKey(o: Obj, ns: string): { key: string; family: 4 | 6 } | { skip: string } | { bad: string } {
  const meta = isObj(o.metadata) ? o.metadata : {};
  const labels = isObj(meta.labels) ? meta.labels : {};
  const svcName = str(labels[SERVICE_NAME_LABEL]);
  if (!svcName) return { skip: `no ${SERVICE_NAME_LABEL} label: not the endpoints of a service` };
  const at = o.addressType;
  if (at === 'FQDN') return { skip: 'addressType FQDN: kube-proxy ignores FQDN slices' };
  if (at !== 'IPv4' && at !== 'IPv6') return { bad: `addressType ${JSON.stringify(at)} is not IPv4, IPv6 or FQDN` };
  return { key: `${ns}/${svcName}`, family: at === 'IPv6' ? 6 : 4 };
}

/**
 * Merge one EndpointSlice's endpoints into a converted service, as kube-proxy's EndpointSliceCache
 * does: an endpoint that is in several slices counts once (the first one seen, unless a later one
 * is on this node: kube-proxy favours the local copy), its port per service-port name; ports the
 * service does not have, or with another protocol, are left out (a warning). `where` names the
 * slice in messages; `bad` gets what cannot be read (the rest of the slice is still used).
 */
export function mergeSlice(rec: ConvertedService, o: Obj, where: string, nodeName: string | undefined, warn: (msg: string) => void, bad: (reason: string) => void): void {
  const key = `${rec.service.namespace}/${rec.service.name}`;
  const family: 4 | 6 = o.addressType === 'IPv6' ? 6 : 4;
  if (!serviceFamiliesOf(rec.service).includes(family)) {
    // kube-proxy's proxier of that family has no ClusterIP of the service: it ignores the slice
    warn(`${where}: addressType ${FAMILY_NAME[family]} but ${key} has no ${FAMILY_NAME[family]} ClusterIP; its endpoints are left out, as kube-proxy leaves them`);
    return;
  }
  const slicePorts: Array<{ name: string; port: number }> = [];
  for (const [i, p] of (Array.isArray(o.ports) ? o.ports : []).entries()) {
    if (!isObj(p)) return bad(`ports[${i}] is not an object`);
    const pname = p.name === undefined || p.name === null ? '' : String(p.name);
    const proto = p.protocol === undefined || p.protocol === null ? 'TCP' : p.protocol;
    if (p.port === undefined || p.port === null) continue; // a port the endpoints do not serve
    if (typeof p.port !== 'number' || !Number.isInteger(p.port) || p.port < 1 || p.port > 65535) return bad(`ports[${i}].port ${JSON.stringify(p.port)} is not a port number`);
    const want = rec.portProtocols.get(pname);
    if (want === undefined) {
      warn(`${where}: port ${JSON.stringify(pname)} is not a port of ${key}; left out`);
      continue;
    }
    if (want !== proto) {
      warn(`${where}: port ${JSON.stringify(pname)} is ${proto} here but ${want} in ${key}; left out`);
      continue;
    }
    slicePorts.push({ name: pname, port: p.port });
  }
  const eps = Array.isArray(o.endpoints) ? o.endpoints : [];
  for (const [i, e] of eps.entries()) {
    if (!isObj(e)) {
      bad(`endpoints[${i}] is not an object`);
      continue;
    }
    const addrs = Array.isArray(e.addresses) ? e.addresses : [];
    const address = addrs[0];
    if (familyOfText(address) !== family) {
      bad(`endpoints[${i}].addresses[0] ${JSON.stringify(address)} is not an ${FAMILY_NAME[family]} address (the slice's addressType)`);
      continue;
    }
    if (slicePorts.length === 0) continue;
    const cond = isObj(e.conditions) ? e.conditions : {};
    const ready = cond.ready === undefined || cond.ready === null ? true : cond.ready === true;
    const serving = cond.serving === undefined || cond.serving === null ? ready : cond.serving === true;
    const terminating = cond.terminating === true;
    const nodeLocal = nodeName !== undefined && e.nodeName === nodeName;
    const prev = rec.endpoints.get(address);
    if (prev === undefined || (nodeLocal && !prev.nodeLocal)) {
      const ep: Endpoint = { address, ports: prev?.ports ?? {} };
      if (!ready) ep.ready = false;
      if (serving !== ready) ep.serving = serving;
      if (terminating) ep.terminating = true;
      if (nodeLocal) ep.nodeLocal = true;
      for (const sp of slicePorts) ep.ports![sp.name] = sp.port;
      rec.endpoints.set(address, ep);
    } else {
      for (const sp of slicePorts) {
        const was = prev.ports![sp.name];
        if (was === undefined) prev.ports![sp.name] = sp.port;
        else if (was !== sp.port) warn(`${where}: endpoint ${address} has port ${sp.port} for ${JSON.stringify(sp.name)} here and ${was} in another slice; the first is kept`);
      }
    }
  }
}

/** The merged endpoints onto the service, in kube-proxy's "ip:port" text order. */
export function finishService(rec: ConvertedService): Service {
  if (rec.endpoints.size > 0) rec.service.endpoints = [...rec.endpoints.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  else delete rec.service.endpoints;
  return rec.service;
}

// ---------------------------------------------------------------- objects → rule set

interface ServiceRec extends ConvertedService {
  line: number;
}

interface SliceRec {
  line: number;
  id: string;
  key: string;
  obj: Obj;
}

/** This node's InternalIP/ExternalIP addresses (IPv4 and IPv6, in the Node's order) from a Node object (empty when it has none). */
export function nodeAddressesOf(o: Obj): string[] {
  const st = isObj(o.status) ? o.status : {};
  const addrs = Array.isArray(st.addresses) ? st.addresses : [];
  const out: string[] = [];
  for (const a of addrs) {
    if (isObj(a) && (a.type === 'InternalIP' || a.type === 'ExternalIP') && familyOfText(a.address) !== 0 && !out.includes(a.address as string)) out.push(a.address as string);
  }
  return out;
}

class Importer {
  readonly notUnderstood: ObjectNote[] = [];
  readonly skipped: ObjectNote[] = [];
  readonly warnings: string[] = [];
  readonly services = new Map<string, ServiceRec>();
  readonly skippedServices = new Map<string, string>();
  readonly slices: SliceRec[] = [];
  nodeAddresses: string[] | null = null;

  constructor(readonly opts: KubernetesImportOptions) {}

  bad(line: number, object: string, reason: string): void {
    this.notUnderstood.push({ line, object, reason });
  }
  skip(line: number, object: string, reason: string): void {
    this.skipped.push({ line, object, reason });
  }

  item(o: unknown, line: number, index: number): void {
    if (!isObj(o)) return this.bad(line, `item ${index}`, `not a Kubernetes object (${Array.isArray(o) ? 'an array' : typeof o})`);
    const kind = str(o.kind);
    const meta = isObj(o.metadata) ? o.metadata : {};
    const name = str(meta.name);
    const ns = str(meta.namespace);
    const id = `${kind ?? 'object'} ${ns ? ns + '/' : ''}${name ?? `(item ${index})`}`;
    if (kind === undefined) return this.bad(line, id, 'no kind: expected a Service or an EndpointSlice');
    switch (kind) {
      case 'Service':
        return this.service(o, line, id, ns, name);
      case 'EndpointSlice':
        return this.endpointSlice(o, line, id, ns, name);
      case 'Node':
        return this.node(o, line, id, name);
      case 'Endpoints':
        return this.bad(line, id, 'v1 Endpoints are not read (kube-proxy reads EndpointSlices): run kubectl get services,endpointslices -A -o json');
      default:
        return this.bad(line, id, `kind ${kind} is not imported: only Service and EndpointSlice (and this node's Node) are read`);
    }
  }

  node(o: Obj, line: number, id: string, name: string | undefined): void {
    if (this.opts.nodeName === undefined || name !== this.opts.nodeName) return this.skip(line, id, this.opts.nodeName === undefined ? 'no nodeName given: Node items are not read' : `not this node (${this.opts.nodeName})`);
    const v4 = nodeAddressesOf(o);
    if (v4.length === 0) return this.bad(line, id, 'status.addresses has no InternalIP or ExternalIP');
    this.nodeAddresses = v4;
  }

  service(o: Obj, line: number, id: string, ns: string | undefined, name: string | undefined): void {
    if (!ns || !name) return this.bad(line, id, 'metadata.namespace and metadata.name are required');
    const key = `${ns}/${name}`;
    if (this.services.has(key) || this.skippedServices.has(key)) return this.bad(line, id, `${key} appears twice; the first is kept`);
    const v = convertService(o, ns, name, `${id} (line ${line})`, (m) => this.warnings.push(m));
    if ('bad' in v) return this.bad(line, id, v.bad);
    if ('skip' in v) {
      this.skippedServices.set(key, v.skip);
      return this.skip(line, id, v.skip);
    }
    this.services.set(key, { ...v.ok, line });
  }

  endpointSlice(o: Obj, line: number, id: string, ns: string | undefined, name: string | undefined): void {
    if (!ns || !name) return this.bad(line, id, 'metadata.namespace and metadata.name are required');
    const k = sliceServiceKey(o, ns);
    if ('skip' in k) return this.skip(line, id, k.skip);
    if ('bad' in k) return this.bad(line, id, k.bad);
    // joined to the services once they are all read (a slice may come before its service)
    this.slices.push({ line, id, key: k.key, obj: o });
  }

  join(): void {
    for (const s of this.slices) {
      const rec = this.services.get(s.key);
      if (rec === undefined) {
        const why = this.skippedServices.get(s.key);
        if (why !== undefined) this.skip(s.line, s.id, `its service ${s.key} is skipped`);
        else this.skip(s.line, s.id, `no service ${s.key} in the input (or it was not understood): its endpoints are left out`);
        continue;
      }
      mergeSlice(rec, s.obj, `${s.id} (line ${s.line})`, this.opts.nodeName, (m) => this.warnings.push(m), (reason) => this.bad(s.line, s.id, reason));
    }
    for (const rec of this.services.values()) finishService(rec);
  }
}

function parseServicePath(path: string): number {
  const m = /^services\[(\d+)\]/.exec(path);
  return m ? Number(m[1]) : -1;
}

/** Import an already-parsed document (`itemLines`: the line of each item, when known). */
export function importKubernetesObject(doc: unknown, opts: KubernetesImportOptions = {}, itemLines: number[] = []): KubernetesImportResult {
  const imp = new Importer(opts);
  let items: unknown[];
  if (Array.isArray(doc)) items = doc;
  else if (isObj(doc) && Array.isArray(doc.items)) items = doc.items;
  else if (isObj(doc) && typeof doc.kind === 'string' && !doc.kind.endsWith('List')) items = [doc];
  else throw new KubernetesImportError('expected a v1 List with items (kubectl get services,endpointslices -A -o json), got ' + (isObj(doc) ? `an object of kind ${JSON.stringify(doc.kind)}` : typeof doc));
  const every = Math.max(1, opts.progressEvery ?? 1000);
  for (let i = 0; i < items.length; i++) {
    imp.item(items[i], itemLines[i] ?? 0, i);
    if (opts.onProgress && (i + 1) % every === 0) opts.onProgress(i + 1, items.length);
  }
  imp.join();
  opts.onProgress?.(items.length, items.length);

  const nodeAddresses = opts.nodeAddresses ?? imp.nodeAddresses ?? [];
  if (nodeAddresses.length === 0) imp.warnings.push('the node\'s addresses are not in the input: node.addresses is empty (pass the node\'s addresses, or a nodeName and its Node item)');
  const node: RuleSet['node'] = { addresses: nodeAddresses };
  if (opts.nodeName !== undefined) node.name = opts.nodeName;
  if (opts.clusterCIDR !== undefined) node.clusterCIDR = opts.clusterCIDR;
  if (opts.masqueradeAddress !== undefined) node.masqueradeAddress = opts.masqueradeAddress;
  if (opts.nodePortRange !== undefined) node.nodePortRange = opts.nodePortRange;

  let recs = [...imp.services.values()];
  // what the rule-set validator refuses in one service (a NodePort outside the range, a clash of two
  // services on one address and port...) takes that service out, named with its line; the rest stays
  for (let round = 0; round < 5; round++) {
    const rs: RuleSet = { apiVersion: API_VERSION, node, services: recs.map((r) => r.service) };
    const v = validateRuleSet(rs);
    if (v.ok) break;
    const refused = new Map<number, string[]>();
    for (const e of v.errors) {
      const i = parseServicePath(e.path);
      if (i < 0) continue;
      const list = refused.get(i) ?? [];
      list.push(`${e.path.replace(/^services\[\d+\]\.?/, '') || '(service)'}: ${e.message}`);
      refused.set(i, list);
    }
    if (refused.size === 0) {
      for (const e of v.errors) imp.warnings.push(`the imported rule set is not valid: ${e.path}: ${e.message}`);
      break;
    }
    for (const [i, msgs] of refused) {
      const r = recs[i];
      imp.bad(r.line, `Service ${r.service.namespace}/${r.service.name}`, `refused by the rule-set validator: ${msgs.join('; ')}`);
    }
    recs = recs.filter((_, i) => !refused.has(i));
  }
  imp.notUnderstood.sort((a, b) => a.line - b.line);
  imp.skipped.sort((a, b) => a.line - b.line);
  return {
    ruleSet: { apiVersion: API_VERSION, node, services: recs.map((r) => r.service) },
    notUnderstood: imp.notUnderstood,
    skipped: imp.skipped,
    warnings: imp.warnings,
    objects: items.length,
  };
}

/** Import the text of `kubectl get services,endpointslices -A -o json` (or -o yaml). */
export function importKubernetes(text: string, opts: KubernetesImportOptions = {}): KubernetesImportResult {
  const { doc, itemLines } = parseKubernetesText(text);
  return importKubernetesObject(doc, opts, itemLines);
}
