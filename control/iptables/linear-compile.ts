/**
 * kube-proxy's iptables rules, parsed (./parser.ts), compiled for the linear
 * walk (./linear.ts): every rule to an object of one shape with numeric
 * fields (matches, target, jump index), every chain to its rules and a
 * prefilter header, so that a walk does no string work and allocates
 * nothing. The walk itself is in linear.ts.
 */
import { serviceFromComment } from './hash.ts';
import { formatIPv4, PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import { formatIPv6 } from '../../dataplane/addr6.ts';
import type { Rule, Match, Table } from './parser.ts';

export const M_PORT = 1;
export const M_MULTIPORT = 2;
export const M_ADDRTYPE = 3;
export const M_RANDOM = 4;
export const M_NTH = 5;
export const M_RECENT = 6;
export const M_MARK = 7;
export const M_CTSTATE = 8;
export const M_NEVER = 9;
/** ICMPv6 type (a) and code (b, -1 any) of an IPv6 packet with proto 58 (its sport/dport carry them) */
export const M_ICMP6 = 10;

// targets
export const T_NONE = 0;
export const T_JUMP = 1;
export const T_GOTO = 2;
export const T_RETURN = 3;
export const T_ACCEPT = 4;
export const T_DROP = 5;
export const T_REJECT = 6;
export const T_DNAT = 7;
export const T_MARK = 8;
export const T_MASQ = 9;
export const T_CONTINUE = 10;

// walk outcomes
export const O_ACCEPT = 1;
export const O_DROP = 2;
export const O_REJECT = 3;
export const O_DNAT = 4;
export const O_MASQ = 5;
export const O_POLICY_ACCEPT = 6;
export const O_POLICY_DROP = 7;
export const O_BRANCH = 8;

// address types (bit per type)
export const AT_LOCAL = 1;
export const AT_UNICAST = 2;
export const AT_BROADCAST = 4;
export const AT_MULTICAST = 8;
export const AT_OTHER = 16;

// conntrack states
export const CT_NEW = 1;
export const CT_DNAT = 2;
export const CT_OTHER = 4;

export const RECENT_SET = 0;
export const RECENT_RCHECK = 1;
export const RECENT_UPDATE = 2;
export const RECENT_REMOVE = 3;

export const TWO31 = 0x80000000;

export class CMatch {
  type = 0;
  inv = false;
  // port: proto, dlo, dhi, dinv, slo, shi, sinv; addrtype: a = src mask bits, b = dst mask bits
  a = 0;
  b = 0;
  c = 0;
  d = 0;
  e = 0;
  f = 0;
  ainv = false;
  binv = false;
  /** multiport ranges lo,hi,lo,hi… */
  ranges: Int32Array | null = null;
  /** statistic random: kernel threshold, round(p * 2^31) */
  threshold = 0;
  /** statistic nth: per-rule counter */
  counter = 0;
  /** recent: list index, action, seconds (-1 none), reap, mask, side (0 src, 1 dst) */
  list = 0;
  action = 0;
  seconds = -1;
  reap = false;
  mask = 0;
  /** recent, IPv6: the mask's 4 words */
  mask6: Uint32Array | null = null;
  side = 0;
}

export class CRule {
  /** line of the rule in the text */
  line: number;
  /** never matches (an interface or fragment test that fails for every packet here, or an unknown match) */
  never = false;
  hasSrc = false;
  srcNet = 0;
  srcMask = 0;
  srcInv = false;
  hasDst = false;
  dstNet = 0;
  dstMask = 0;
  dstInv = false;
  /** IPv6 (family-6 tables): the -s/-d networks and masks, 4 words each; null when absent or IPv4 */
  srcNet6: Uint32Array | null = null;
  srcMask6: Uint32Array | null = null;
  dstNet6: Uint32Array | null = null;
  dstMask6: Uint32Array | null = null;
  /** -1: any protocol */
  proto = -1;
  protoInv = false;
  matches: CMatch[] = [];
  target = T_NONE;
  /** chain index for T_JUMP / T_GOTO, -1 when the chain is not defined */
  jump = -1;
  dnatAddr = 0;
  /** IPv6 DNAT target's 4 words (family 6), else null */
  dnatAddr6: Uint32Array | null = null;
  /** -1: keep the destination port */
  dnatPort = -1;
  dnatText = '';
  markValue = 0;
  markMask = 0;
  /** the service-port name this rule's comment names, or null */
  service: string | null = null;
  noLocalEndpoints = false;
  firewall = false;
  constructor(rule: Rule) {
    this.line = rule.line;
  }
}

// header words of a rule in a chain's packed array (stride HDR)
export const HDR = 5;
export const H_NEVER = 1;
export const H_DST = 2;
export const H_DST_INV = 4;
export const H_SRC = 8;
export const H_SRC_INV = 16;
export const H_PROTO = 32;
export const H_PROTO_INV = 64;
/** IPv6 chains: flags | proto << 8, dst net (4 words), dst mask (4), src net (4), src mask (4) */
export const HDR6 = 17;

/**
 * A chain: its rules, and their IP-header tests packed in one typed array,
 * HDR words a rule: flags | protocol << 8, dst net, dst mask, src net, src mask.
 * A walk reads the rule object only when the header matches.
 */
export class CChain {
  readonly rules: CRule[];
  readonly hdr: Uint32Array;
  constructor(rules: CRule[], family: 4 | 6 = 4) {
    this.rules = rules;
    const stride = family === 6 ? HDR6 : HDR;
    const h = new Uint32Array(rules.length * stride);
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i];
      let f = 0;
      if (r.never) f |= H_NEVER;
      if (r.hasDst) f |= H_DST | (r.dstInv ? H_DST_INV : 0);
      if (r.hasSrc) f |= H_SRC | (r.srcInv ? H_SRC_INV : 0);
      if (r.proto >= 0) f |= H_PROTO | (r.protoInv ? H_PROTO_INV : 0) | (r.proto << 8);
      if (family === 6) {
        const b = i * HDR6;
        h[b] = f;
        if (r.dstNet6 && r.dstMask6) {
          h.set(r.dstNet6, b + 1);
          h.set(r.dstMask6, b + 5);
        }
        if (r.srcNet6 && r.srcMask6) {
          h.set(r.srcNet6, b + 9);
          h.set(r.srcMask6, b + 13);
        }
        continue;
      }
      h[i * HDR] = f;
      h[i * HDR + 1] = r.dstNet;
      h[i * HDR + 2] = r.dstMask;
      h[i * HDR + 3] = r.srcNet;
      h[i * HDR + 4] = r.srcMask;
    }
    this.hdr = h;
  }
}

export class CTable {
  chains: CChain[] = [];
  names: string[] = [];
  index = new Map<string, number>();
  /** per chain: O_POLICY_ACCEPT / O_POLICY_DROP for built-in chains, 0 for user chains */
  policy: number[] = [];
}

export function addrTypeBits(types: string[]): number {
  let bits = 0;
  for (const t of types) {
    if (t === 'LOCAL') bits |= AT_LOCAL;
    else if (t === 'UNICAST') bits |= AT_UNICAST;
    else if (t === 'BROADCAST') bits |= AT_BROADCAST;
    else if (t === 'MULTICAST') bits |= AT_MULTICAST;
    else bits |= AT_OTHER;
  }
  return bits;
}

export function ctStateBits(states: string[]): number {
  let bits = 0;
  for (const s of states) {
    if (s === 'NEW') bits |= CT_NEW;
    else if (s === 'DNAT') bits |= CT_DNAT;
    else bits |= CT_OTHER;
  }
  return bits;
}

export function ifaceMatches(pattern: string, name: string): boolean {
  if (pattern.endsWith('+')) return name.startsWith(pattern.slice(0, -1));
  return pattern === name;
}

export function protoNumberOf(module: string): number {
  return module === 'tcp' ? PROTO_TCP : module === 'udp' ? PROTO_UDP : PROTO_SCTP;
}

export function compileTable(t: Table | undefined, name: string, lists: Map<string, number>, inIf: string, outIf: string, family: 4 | 6 = 4): CTable {
  const ct = new CTable();
  if (!t) return ct;
  for (const chain of t.chains.values()) {
    ct.index.set(chain.name, ct.names.length);
    ct.names.push(chain.name);
    ct.policy.push(chain.policy === null ? 0 : chain.policy === 'DROP' ? O_POLICY_DROP : O_POLICY_ACCEPT);
  }
  for (const chain of t.chains.values()) {
    const rules: CRule[] = [];
    for (const r of chain.rules) rules.push(compileRule(r, ct, name, chain.name, lists, inIf, outIf));
    ct.chains.push(new CChain(rules, family));
  }
  return ct;
}

export function compileRule(r: Rule, t: CTable, tableName: string, chainName: string, lists: Map<string, number>, inIf: string, outIf: string): CRule {
  const c = new CRule(r);
  if (r.src) {
    c.hasSrc = true;
    c.srcNet = r.src.net;
    c.srcMask = r.src.mask;
    c.srcInv = r.src.invert;
    c.srcNet6 = r.src.net6 ?? null;
    c.srcMask6 = r.src.mask6 ?? null;
  }
  if (r.dst) {
    c.hasDst = true;
    c.dstNet = r.dst.net;
    c.dstMask = r.dst.mask;
    c.dstInv = r.dst.invert;
    c.dstNet6 = r.dst.net6 ?? null;
    c.dstMask6 = r.dst.mask6 ?? null;
  }
  if (r.protocol) {
    c.proto = r.protocol.number;
    c.protoInv = r.protocol.invert;
  }
  if (r.inInterface && ifaceMatches(r.inInterface.name, inIf) === r.inInterface.invert) c.never = true;
  if (r.outInterface && ifaceMatches(r.outInterface.name, outIf) === r.outInterface.invert) c.never = true;
  // the first packet of a flow is never a non-first fragment: `-f` never matches, `! -f` always
  if (r.fragment && !r.fragment.invert) c.never = true;
  for (const m of r.matches) {
    const cm = compileMatch(m, lists);
    if (cm) c.matches.push(cm);
  }
  c.service = serviceFromComment(r.comment);
  c.noLocalEndpoints = r.comment !== null && r.comment.endsWith(' has no local endpoints');
  c.firewall = chainName === 'KUBE-PROXY-FIREWALL' || (r.comment !== null && / traffic not accepted by /.test(r.comment));
  const tg = r.target;
  if (tg === null) c.target = T_NONE;
  else {
    switch (tg.kind) {
      case 'jump':
        c.target = tg.goto ? T_GOTO : T_JUMP;
        c.jump = t.index.get(tg.chain) ?? -1;
        break;
      case 'ACCEPT':
        c.target = T_ACCEPT;
        break;
      case 'DROP':
        c.target = T_DROP;
        break;
      case 'RETURN':
        c.target = T_RETURN;
        break;
      case 'REJECT':
        c.target = T_REJECT;
        break;
      case 'DNAT':
        c.target = T_DNAT;
        c.dnatAddr = tg.addr;
        c.dnatAddr6 = tg.addr6 ?? null;
        c.dnatPort = tg.port ?? -1;
        c.dnatText = tg.port === null ? '' : tg.addr6 ? `[${formatIPv6(tg.addr6)}]:${tg.port}` : `${formatIPv4(tg.addr)}:${tg.port}`;
        break;
      case 'MARK':
        c.target = T_MARK;
        c.markValue = tg.value >>> 0;
        c.markMask = tg.mask >>> 0;
        break;
      case 'MASQUERADE':
        c.target = T_MASQ;
        break;
      case 'unknown':
        // SNAT is source NAT like MASQUERADE; REDIRECT/NETMAP/TPROXY end the nat walk; the rest (LOG, CONNMARK…) go on
        if (tg.name === 'SNAT') c.target = T_MASQ;
        else if (tableName === 'nat' && (tg.name === 'REDIRECT' || tg.name === 'NETMAP')) c.target = T_ACCEPT;
        else c.target = T_CONTINUE;
        break;
    }
  }
  return c;
}

export function compileMatch(m: Match, lists: Map<string, number>): CMatch | null {
  const cm = new CMatch();
  switch (m.kind) {
    case 'comment':
      return null; // always matches; its text is read at compile time
    case 'nfacct':
      return null; // an accounting counter: always matches
    case 'port':
      cm.type = M_PORT;
      cm.a = protoNumberOf(m.module);
      cm.b = m.dport ? m.dport.lo : 0;
      cm.c = m.dport ? m.dport.hi : 65535;
      cm.ainv = m.dportInvert;
      cm.d = m.sport ? m.sport.lo : 0;
      cm.e = m.sport ? m.sport.hi : 65535;
      cm.binv = m.sportInvert;
      return cm;
    case 'multiport': {
      cm.type = M_MULTIPORT;
      cm.a = m.dir === 'dst' ? 0 : m.dir === 'src' ? 1 : 2;
      cm.inv = m.invert;
      const r = new Int32Array(m.ports.length * 2);
      m.ports.forEach((p, i) => {
        r[2 * i] = p.lo;
        r[2 * i + 1] = p.hi;
      });
      cm.ranges = r;
      return cm;
    }
    case 'addrtype':
      cm.type = M_ADDRTYPE;
      cm.a = m.srcType ? addrTypeBits(m.srcType) : 0;
      cm.ainv = m.srcInvert;
      cm.b = m.dstType ? addrTypeBits(m.dstType) : 0;
      cm.binv = m.dstInvert;
      return cm;
    case 'statistic':
      cm.inv = m.invert;
      if (m.mode === 'random') {
        cm.type = M_RANDOM;
        cm.threshold = Math.round(m.probability * TWO31);
      } else {
        cm.type = M_NTH;
        cm.a = m.every > 0 ? m.every - 1 : 0;
        cm.counter = m.packet;
      }
      return cm;
    case 'recent': {
      if (m.hitcount !== null) {
        cm.type = M_NEVER; // hit counts need every timestamp; not modelled
        return cm;
      }
      cm.type = M_RECENT;
      cm.inv = m.invert;
      let idx = lists.get(m.name);
      if (idx === undefined) {
        idx = lists.size;
        lists.set(m.name, idx);
      }
      cm.list = idx;
      cm.action = m.action === 'set' ? RECENT_SET : m.action === 'rcheck' ? RECENT_RCHECK : m.action === 'update' ? RECENT_UPDATE : RECENT_REMOVE;
      cm.seconds = m.seconds ?? -1;
      cm.reap = m.reap;
      cm.mask = m.mask >>> 0;
      cm.mask6 = m.mask6 ?? null;
      cm.side = m.side === 'src' ? 0 : 1;
      return cm;
    }
    case 'mark':
      cm.type = M_MARK;
      cm.a = m.value >>> 0;
      cm.b = m.mask >>> 0;
      cm.inv = m.invert;
      return cm;
    case 'conntrack':
      cm.type = M_CTSTATE;
      cm.a = ctStateBits(m.ctstate);
      cm.inv = m.invert;
      return cm;
    case 'icmp6':
      cm.type = M_ICMP6;
      cm.a = m.type;
      cm.b = m.code;
      cm.inv = m.invert;
      return cm;
    case 'unknown':
      cm.type = M_NEVER;
      return cm;
  }
}

