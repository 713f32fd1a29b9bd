/**
 * kube-proxy's iptables rules walked linearly, as netfilter does: first
 * match wins, `-j` jumps and returns at the chain's end or on RETURN, `-g`
 * goes to a chain without coming back, a built-in chain's end is its policy,
 * MARK changes the packet's mark and goes on, DNAT / MASQUERADE / ACCEPT /
 * DROP / REJECT end the walk of the table.
 *
 * A NEW packet arriving from outside: nat PREROUTING first. If it is DNATed,
 * nat POSTROUTING is walked with the new destination and the mark to learn
 * whether MASQUERADE applies. If not, the filter table's INPUT (destination is
 * a local address) or FORWARD chain decides between REJECT, DROP and nothing.
 *
 * Two ways to ask:
 * - `evaluate` (the test oracle) follows both branches of every `statistic`
 *   rule and answers the endpoints with their probabilities; `recent --rcheck`
 *   never matches (no affinity state).
 * - `sample` (the packet path, benchmarked) draws at each `statistic` rule as
 *   the kernel does and keeps `recent` lists, so ClientIP affinity works.
 *
 * IPv6: an evaluator built from an ip6tables-save parse (`parseIptablesSave(text,
 * { family: 6 })`) walks IPv6 packets with the same first-match semantics:
 * `sample6` / `evaluate6` take a PacketTuple6 (dataplane/decider6.ts, the
 * addresses as 4 words), the endpoints are `[fd00::1]:8080`. One evaluator
 * reads one family, as the kernel has one ruleset per family.
 *
 * Rules are compiled once, in the constructor (./linear-compile.ts), to
 * objects of one shape with numeric fields; a walk does no string work and
 * allocates nothing.
 */
import { serviceFromComment } from './hash.ts';
import {
  M_PORT,
  M_MULTIPORT,
  M_ADDRTYPE,
  M_RANDOM,
  M_NTH,
  M_RECENT,
  M_MARK,
  M_CTSTATE,
  M_ICMP6,
  HDR6,
  T_NONE,
  T_JUMP,
  T_GOTO,
  T_RETURN,
  T_ACCEPT,
  T_DROP,
  T_REJECT,
  T_DNAT,
  T_MARK,
  T_MASQ,
  T_CONTINUE,
  O_ACCEPT,
  O_DROP,
  O_REJECT,
  O_DNAT,
  O_MASQ,
  O_POLICY_ACCEPT,
  O_BRANCH,
  AT_LOCAL,
  AT_UNICAST,
  AT_BROADCAST,
  AT_MULTICAST,
  CT_NEW,
  CT_DNAT,
  RECENT_SET,
  RECENT_RCHECK,
  RECENT_UPDATE,
  RECENT_REMOVE,
  TWO31,
  CMatch,
  CRule,
  HDR,
  H_NEVER,
  H_DST,
  H_DST_INV,
  H_SRC,
  H_SRC_INV,
  H_PROTO,
  H_PROTO_INV,
  CTable,
  compileTable,
} from './linear-compile.ts';
import type { Verdict, Candidate, PacketTuple, VerdictDropReason } from '../../dataplane/verdict.ts';
import type { PacketTuple6, DeciderSample6, SampleDecider6 } from '../../dataplane/decider6.ts';
import { parseIPv4, formatIPv4, PROTO_TCP, PROTO_UDP, PROTO_SCTP } from '../../dataplane/addr.ts';
import { parseIPv6, formatIPv6 } from '../../dataplane/addr6.ts';
import type { ParsedIptables } from './parser.ts';
import { parseIptablesSave, detectFamily } from './parser.ts';

export interface LinearOptions {
  /**
   * what `-m addrtype --src-type/--dst-type LOCAL` matches: the node's addresses (text or numbers).
   * An IPv6 evaluator takes the IPv6 ones (text or 4-word arrays) and skips IPv4 ones, so a dual-stack
   * node's list serves both.
   */
  localAddresses: ReadonlyArray<string | number | Uint32Array>;
  /** uniform in [0, 1); default Math.random. Drawn once per `statistic --mode random` rule visited by `sample`. */
  random?: () => number;
  /** entries per `recent` list (xt_recent's ip_list_tot, 100 by default); the least recently set is dropped beyond it */
  recentListSize?: number;
  /** the packet's input interface for `-i` (default "": matches no named interface) */
  inInterface?: string;
  /** the packet's output interface for `-o` (default "") */
  outInterface?: string;
}

/** What `sample` and `sample6` answer. The same object is reused by every call: copy what you keep. */
export interface LinearSample extends DeciderSample6 {
  kind: 'dnat' | 'reject' | 'drop' | 'nomatch';
  /** kube-proxy's service-port name ("" when none) */
  service: string;
  reason: VerdictDropReason | null;
  /** "ip:port" of the chosen endpoint ("" unless dnat) */
  endpoint: string;
  /** IPv4: the chosen endpoint's address (0 for IPv6: see endpointAddr6) */
  endpointAddr: number;
  endpointPort: number;
  masquerade: boolean;
  /** IPv6: the chosen endpoint's 4 words (zeros for IPv4) */
  endpointAddr6: Uint32Array;
  /** rules whose matches were evaluated for this packet, across all chains */
  rulesVisited: number;
}

// match types
// serviceFromComment lives with the chain names (./hash.ts); exported here too for its users
export { serviceFromComment };

const ALL_ONES6 = new Uint32Array([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff]);

export class LinearEvaluator implements SampleDecider6 {
  /** the family of the rules (the parse's): 4 walks PacketTuples, 6 PacketTuple6s */
  readonly family: 4 | 6;
  /** rules visited by every `sample` and `evaluate` call so far */
  rulesVisited = 0;
  /** when set (by `trace`), called for every rule visited: its line in the iptables text and whether it matched */
  private tracer: ((line: number, matched: boolean) => void) | null = null;
  /** rules in the nat and filter tables */
  readonly ruleCount: number;

  private readonly nat: CTable;
  private readonly filter: CTable;
  private readonly natPrerouting: number;
  private readonly natPostrouting: number;
  private readonly filterInput: number;
  private readonly filterForward: number;
  private readonly local: Set<number>;
  private readonly random: () => number;
  private readonly recentListSize: number;
  /** IPv4 lists keyed by the masked address, IPv6 ones by its masked words as text */
  private readonly recentLists: Map<number | string, number>[] = [];
  /** IPv6 local addresses, 4 words each */
  private readonly local6: Uint32Array;
  private readonly stackChain: Int32Array;
  private readonly stackPos: Int32Array;
  private readonly maxVisits: number;

  // per-walk state (fields, not allocations)
  private src = 0;
  private dst = 0;
  private proto = 0;
  private sport = 0;
  private dport = 0;
  /** IPv6 walk: the packet's addresses (copied: a DNAT rewrites dst6) */
  private readonly src6 = new Uint32Array(4);
  private readonly dst6 = new Uint32Array(4);
  private readonly scratch6 = new Uint32Array(4);
  private mark = 0;
  private ct = CT_NEW;
  private srcType = 0;
  private dstType = 0;
  private now = 0;
  private visits = 0;
  private lastService: string | null = null;
  private lastNoLocal = false;
  private decidingRule: CRule | null = null;
  // evaluate mode: scripted statistic decisions
  private enumerate = false;
  private decisions: boolean[] = [];
  private cursor = 0;
  private branchProbability = 0;
  private branching = false;
  private affinitySeconds = 0;

  private readonly result: LinearSample = {
    kind: 'nomatch',
    service: '',
    reason: null,
    endpoint: '',
    endpointAddr: 0,
    endpointPort: 0,
    masquerade: false,
    endpointAddr6: new Uint32Array(4),
    rulesVisited: 0,
  };
  private cur4: PacketTuple | null = null;
  private cur6: PacketTuple6 | null = null;

  constructor(parsed: ParsedIptables, opts: LinearOptions) {
    this.family = parsed.family ?? 4;
    this.local = new Set();
    const local6: number[] = [];
    for (const a of opts.localAddresses) {
      if (this.family === 6) {
        if (typeof a === 'number') continue;
        if (typeof a !== 'string') {
          local6.push(a[0], a[1], a[2], a[3]);
          continue;
        }
        if (!a.includes(':')) continue; // an IPv4 address of a dual-stack node
        const w = parseIPv6(a);
        if (w === null) throw new Error(`localAddresses: '${a}' is not an IPv6 address`);
        local6.push(...w);
        continue;
      }
      // an IPv6 address of a dual-stack node: not this evaluator's family (as the IPv6 one skips IPv4 entries)
      if (a instanceof Uint32Array || (typeof a === 'string' && a.includes(':'))) continue;
      const n = typeof a === 'number' ? a >>> 0 : parseIPv4(a);
      if (n < 0) throw new Error(`localAddresses: '${a}' is not an IPv4 address`);
      this.local.add(n);
    }
    this.local6 = Uint32Array.from(local6);
    this.random = opts.random ?? Math.random;
    this.recentListSize = opts.recentListSize ?? 100;
    const lists = new Map<string, number>();
    const inIf = opts.inInterface ?? '';
    const outIf = opts.outInterface ?? '';
    this.nat = compileTable(parsed.tables.get('nat'), 'nat', lists, inIf, outIf, this.family);
    this.filter = compileTable(parsed.tables.get('filter'), 'filter', lists, inIf, outIf, this.family);
    for (let i = 0; i < lists.size; i++) this.recentLists.push(new Map());
    let count = 0;
    for (const t of [this.nat, this.filter]) for (const c of t.chains) count += c.rules.length;
    this.ruleCount = count;
    const depth = this.nat.chains.length + this.filter.chains.length + 2;
    this.stackChain = new Int32Array(depth);
    this.stackPos = new Int32Array(depth);
    this.maxVisits = 1_000_000 + count * 16;
    this.natPrerouting = this.nat.index.get('PREROUTING') ?? -1;
    this.natPostrouting = this.nat.index.get('POSTROUTING') ?? -1;
    this.filterInput = this.filter.index.get('INPUT') ?? -1;
    this.filterForward = this.filter.index.get('FORWARD') ?? -1;
  }

  private addrType(a: number): number {
    if (this.local.has(a)) return AT_LOCAL;
    if (a === 0xffffffff) return AT_BROADCAST;
    if (a >>> 28 === 0xe) return AT_MULTICAST;
    return AT_UNICAST;
  }

  /** kernel's addrtype for IPv6: LOCAL (a node address, ::1), MULTICAST (ff00::/8), else UNICAST */
  private addrType6(a: Uint32Array): number {
    const l = this.local6;
    for (let i = 0; i < l.length; i += 4) if (l[i] === a[0] && l[i + 1] === a[1] && l[i + 2] === a[2] && l[i + 3] === a[3]) return AT_LOCAL;
    if (a[0] === 0 && a[1] === 0 && a[2] === 0 && a[3] === 1) return AT_LOCAL;
    if (a[0] >>> 24 === 0xff) return AT_MULTICAST;
    return AT_UNICAST;
  }

  /** an IPv6 recent list's key: the masked address's words as text (made only when a recent rule is reached) */
  private recentKey6(m: CMatch): string {
    const a = m.side === 0 ? this.src6 : this.dst6;
    const k = m.mask6 ?? ALL_ONES6;
    return `${(a[0] & k[0]) >>> 0},${(a[1] & k[1]) >>> 0},${(a[2] & k[2]) >>> 0},${(a[3] & k[3]) >>> 0}`;
  }

  private recentMatch(m: CMatch): boolean {
    if (this.enumerate) {
      // no affinity state: only --set matches
      return m.action === RECENT_SET ? !m.inv : m.inv;
    }
    const list = this.recentLists[m.list];
    const key = this.family === 6 ? this.recentKey6(m) : ((m.side === 0 ? this.src : this.dst) & m.mask) >>> 0;
    const now = this.now;
    const seen = list.get(key);
    if (seen === undefined) {
      if (m.action === RECENT_SET) {
        this.recentSet(list, key, now);
        return !m.inv;
      }
      return m.inv;
    }
    if (m.action === RECENT_SET) {
      this.recentSet(list, key, now);
      return !m.inv;
    }
    if (m.action === RECENT_REMOVE) {
      list.delete(key);
      return !m.inv;
    }
    let hit = true;
    if (m.seconds >= 0) {
      hit = now - seen <= m.seconds * 1000;
      if (!hit && m.reap) list.delete(key);
    }
    if (hit && m.action === RECENT_UPDATE) this.recentSet(list, key, now);
    return hit !== m.inv;
  }

  private recentSet(list: Map<number | string, number>, key: number | string, now: number): void {
    list.delete(key);
    list.set(key, now);
    if (list.size > this.recentListSize) {
      const oldest = list.keys().next().value as number | string;
      list.delete(oldest);
    }
  }

  /** Do the rule's match modules all hold (the IP header is checked by the walk)? Sets `branching` and returns false when evaluate needs a decision it has not got. */
  private matches(r: CRule): boolean {
    const ms = r.matches;
    for (let i = 0; i < ms.length; i++) {
      const m = ms[i];
      switch (m.type) {
        case M_PORT: {
          if (this.proto !== m.a) return false;
          const dp = this.dport;
          if ((dp >= m.b && dp <= m.c) === m.ainv) return false;
          const sp = this.sport;
          if ((sp >= m.d && sp <= m.e) === m.binv) return false;
          break;
        }
        case M_MULTIPORT: {
          if (this.proto !== PROTO_TCP && this.proto !== PROTO_UDP && this.proto !== PROTO_SCTP) return false;
          const rg = m.ranges!;
          let hit = false;
          for (let k = 0; k < rg.length && !hit; k += 2) {
            if (m.a !== 1 && this.dport >= rg[k] && this.dport <= rg[k + 1]) hit = true;
            if (m.a !== 0 && this.sport >= rg[k] && this.sport <= rg[k + 1]) hit = true;
          }
          if (hit === m.inv) return false;
          break;
        }
        case M_ADDRTYPE:
          if (m.a !== 0 && ((this.srcType & m.a) !== 0) === m.ainv) return false;
          if (m.b !== 0 && ((this.dstType & m.b) !== 0) === m.binv) return false;
          break;
        case M_RANDOM: {
          let taken: boolean;
          if (this.enumerate) {
            if (this.cursor >= this.decisions.length) {
              this.branchProbability = m.threshold / TWO31;
              this.branching = true;
              return false;
            }
            taken = this.decisions[this.cursor++];
          } else {
            const u = (this.random() * 4294967296) >>> 0;
            taken = (u & 0x7fffffff) < m.threshold;
          }
          if (taken === m.inv) return false;
          break;
        }
        case M_NTH: {
          let taken: boolean;
          if (this.enumerate) {
            if (this.cursor >= this.decisions.length) {
              this.branchProbability = 1 / (m.a + 1);
              this.branching = true;
              return false;
            }
            taken = this.decisions[this.cursor++];
          } else {
            m.counter = m.counter >= m.a ? 0 : m.counter + 1;
            taken = m.counter === 0;
          }
          if (taken === m.inv) return false;
          break;
        }
        case M_RECENT:
          if (this.enumerate && this.affinitySeconds === 0 && m.seconds > 0 && (m.action === RECENT_RCHECK || m.action === RECENT_UPDATE)) {
            this.affinitySeconds = m.seconds; // the chain's ClientIP timeout, reported by evaluate
          }
          if (!this.recentMatch(m)) return false;
          break;
        case M_MARK:
          if ((((this.mark & m.b) >>> 0) === m.a) === m.inv) return false;
          break;
        case M_CTSTATE:
          if (((this.ct & m.a) !== 0) === m.inv) return false;
          break;
        case M_ICMP6:
          // ip6t icmp6: only ICMPv6 packets, inversion applies to the type/code test alone
          if (this.proto !== 58) return false;
          if ((this.sport === m.a && (m.b < 0 || this.dport === m.b)) === m.inv) return false;
          break;
        default:
          return false;
      }
    }
    return true;
  }

  /** Walk `table` from built-in chain `start`; returns an O_* outcome, the deciding rule in decidingRule. */
  private walk(t: CTable, start: number): number {
    if (start < 0) return O_POLICY_ACCEPT;
    let cur = start;
    let chain = t.chains[cur];
    let hdr = chain.hdr;
    let n = chain.rules.length;
    let pos = 0;
    let sp = 0;
    const stackChain = this.stackChain;
    const stackPos = this.stackPos;
    // constant for the walk: a DNAT ends it
    const dst = this.dst;
    const src = this.src;
    const proto = this.proto;
    const v6 = this.family === 6;
    const stride = v6 ? HDR6 : HDR;
    const tracer = this.tracer;
    let visits = this.visits;
    for (;;) {
      if (pos >= n) {
        if (sp === 0) {
          this.visits = visits;
          return t.policy[start] || O_POLICY_ACCEPT;
        }
        sp--;
        cur = stackChain[sp];
        pos = stackPos[sp];
        chain = t.chains[cur];
        hdr = chain.hdr;
        n = chain.rules.length;
        continue;
      }
      // the IP header first, from the packed array (most rules fail here), then the match modules
      const h = pos * stride;
      const f = hdr[h];
      pos++;
      visits++;
      if (f !== 0) {
        if (v6 ? this.headerMisses6(hdr, h, f) : (f & H_NEVER) !== 0 ||
          ((f & H_DST) !== 0 && (((dst & hdr[h + 2]) >>> 0) === hdr[h + 1]) === ((f & H_DST_INV) !== 0)) ||
          ((f & H_SRC) !== 0 && (((src & hdr[h + 4]) >>> 0) === hdr[h + 3]) === ((f & H_SRC_INV) !== 0)) ||
          ((f & H_PROTO) !== 0 && (proto === f >>> 8) === ((f & H_PROTO_INV) !== 0))) {
          if (tracer !== null) tracer(chain.rules[pos - 1].line, false);
          continue;
        }
      }
      const r = chain.rules[pos - 1];
      if (r.matches.length !== 0 && !this.matches(r)) {
        if (this.branching) {
          this.visits = visits;
          return O_BRANCH;
        }
        if (tracer !== null) tracer(r.line, false);
        continue;
      }
      if (tracer !== null) tracer(r.line, true);
      if (r.service !== null) {
        this.lastService = r.service;
        if (r.noLocalEndpoints) this.lastNoLocal = true;
      }
      switch (r.target) {
        case T_NONE:
        case T_CONTINUE:
          continue;
        case T_MARK:
          this.mark = ((this.mark & ~r.markMask) ^ r.markValue) >>> 0;
          continue;
        case T_JUMP:
          if (r.jump < 0) continue; // a chain the dump does not define: nothing in it
          if (sp >= stackChain.length) throw new Error(`chain nesting deeper than ${stackChain.length} at line ${r.line} (a loop?)`);
          if (visits > this.maxVisits) throw new Error(`more than ${this.maxVisits} rules visited for one packet (a loop?)`);
          stackChain[sp] = cur;
          stackPos[sp] = pos;
          sp++;
          cur = r.jump;
          chain = t.chains[cur];
          hdr = chain.hdr;
          n = chain.rules.length;
          pos = 0;
          continue;
        case T_GOTO:
          if (visits > this.maxVisits) throw new Error(`more than ${this.maxVisits} rules visited for one packet (a loop?)`);
          if (r.jump < 0) {
            pos = n; // an empty chain: back to the caller
            continue;
          }
          cur = r.jump;
          chain = t.chains[cur];
          hdr = chain.hdr;
          n = chain.rules.length;
          pos = 0;
          continue;
        case T_RETURN:
          pos = n;
          continue;
        case T_ACCEPT:
          this.decidingRule = r;
          this.visits = visits;
          return O_ACCEPT;
        case T_DROP:
          this.decidingRule = r;
          this.visits = visits;
          return O_DROP;
        case T_REJECT:
          this.decidingRule = r;
          this.visits = visits;
          return O_REJECT;
        case T_DNAT:
          this.decidingRule = r;
          this.visits = visits;
          return O_DNAT;
        case T_MASQ:
          this.decidingRule = r;
          this.visits = visits;
          return O_MASQ;
      }
    }
  }

  /** The IPv6 header test of the rule at hdr[h] (HDR6 words): true when the packet fails it. */
  private headerMisses6(hdr: Uint32Array, h: number, f: number): boolean {
    if ((f & H_NEVER) !== 0) return true;
    if ((f & H_DST) !== 0) {
      const a = this.dst6;
      const inside =
        ((a[0] & hdr[h + 5]) >>> 0) === hdr[h + 1] &&
        ((a[1] & hdr[h + 6]) >>> 0) === hdr[h + 2] &&
        ((a[2] & hdr[h + 7]) >>> 0) === hdr[h + 3] &&
        ((a[3] & hdr[h + 8]) >>> 0) === hdr[h + 4];
      if (inside === ((f & H_DST_INV) !== 0)) return true;
    }
    if ((f & H_SRC) !== 0) {
      const a = this.src6;
      const inside =
        ((a[0] & hdr[h + 13]) >>> 0) === hdr[h + 9] &&
        ((a[1] & hdr[h + 14]) >>> 0) === hdr[h + 10] &&
        ((a[2] & hdr[h + 15]) >>> 0) === hdr[h + 11] &&
        ((a[3] & hdr[h + 16]) >>> 0) === hdr[h + 12];
      if (inside === ((f & H_SRC_INV) !== 0)) return true;
    }
    return (f & H_PROTO) !== 0 && (this.proto === f >>> 8) === ((f & H_PROTO_INV) !== 0);
  }

  private load6(pkt: PacketTuple6): void {
    this.src6.set(pkt.src);
    this.dst6.set(pkt.dst);
    this.src = 0;
    this.dst = 0;
    this.begin(pkt.proto, pkt.sport, pkt.dport, this.addrType6(this.src6), this.addrType6(this.dst6));
  }

  private load(pkt: PacketTuple): void {
    this.src = pkt.src >>> 0;
    this.dst = pkt.dst >>> 0;
    this.begin(pkt.proto, pkt.sport, pkt.dport, this.addrType(this.src), this.addrType(this.dst));
  }

  /** The walk's state for a new packet of either family (its addresses loaded by the caller). */
  private begin(proto: number, sport: number, dport: number, srcType: number, dstType: number): void {
    this.proto = proto;
    this.sport = sport;
    this.dport = dport;
    this.mark = 0;
    this.ct = CT_NEW;
    this.srcType = srcType;
    this.dstType = dstType;
    this.lastService = null;
    this.lastNoLocal = false;
    this.decidingRule = null;
    this.branchProbability = 0;
    this.branching = false;
    this.affinitySeconds = 0;
  }

  /** One packet through nat PREROUTING, then nat POSTROUTING or filter INPUT/FORWARD; fills `out`. Returns false when evaluate needs a decision. */
  private run(out: LinearSample): boolean {
    if (this.family === 6) this.load6(this.cur6!);
    else this.load(this.cur4!);
    this.visits = 0;
    const o = this.walk(this.nat, this.natPrerouting);
    if (o === O_BRANCH) return this.stop();
    if (o === O_DNAT) {
      const r = this.decidingRule!;
      out.kind = 'dnat';
      out.service = r.service ?? this.lastService ?? '';
      out.reason = null;
      out.endpointPort = r.dnatPort >= 0 ? r.dnatPort : this.dport;
      if (this.family === 6) {
        const a6 = r.dnatAddr6 ?? ALL_ONES6;
        out.endpointAddr = 0;
        out.endpointAddr6.set(a6);
        out.endpoint = r.dnatPort >= 0 ? r.dnatText : `[${formatIPv6(a6)}]:${this.dport}`;
        this.dst6.set(a6);
        this.dstType = this.addrType6(this.dst6);
      } else {
        out.endpointAddr = r.dnatAddr;
        out.endpoint = r.dnatPort >= 0 ? r.dnatText : `${formatIPv4(r.dnatAddr)}:${this.dport}`;
        this.dst = r.dnatAddr;
        this.dstType = this.addrType(this.dst);
      }
      if (r.dnatPort >= 0) this.dport = r.dnatPort;
      this.ct = CT_NEW | CT_DNAT;
      const p = this.walk(this.nat, this.natPostrouting);
      if (p === O_BRANCH) return this.stop();
      out.masquerade = p === O_MASQ;
      out.rulesVisited = this.visits;
      return true;
    }
    out.endpoint = '';
    out.endpointAddr = 0;
    out.endpointAddr6.fill(0);
    out.endpointPort = 0;
    out.masquerade = false;
    if (o === O_DROP) {
      this.drop(out);
    } else {
      const chain = (this.family === 6 ? this.addrType6(this.dst6) === AT_LOCAL : this.local.has(this.dst)) ? this.filterInput : this.filterForward;
      const f = this.walk(this.filter, chain);
      if (f === O_BRANCH) return this.stop();
      if (f === O_REJECT) {
        out.kind = 'reject';
        out.service = this.decidingRule!.service ?? this.lastService ?? '';
        out.reason = null;
      } else if (f === O_DROP) {
        this.drop(out);
      } else {
        out.kind = 'nomatch';
        out.service = '';
        out.reason = null;
      }
    }
    out.rulesVisited = this.visits;
    return true;
  }

  private stop(): boolean {
    this.rulesVisited += this.visits;
    return false;
  }

  private drop(out: LinearSample): void {
    const r = this.decidingRule!;
    out.kind = 'drop';
    out.service = r.service ?? this.lastService ?? '';
    out.reason = r.noLocalEndpoints ? 'no_local_endpoints' : r.firewall ? 'source_range' : this.lastNoLocal ? 'no_local_endpoints' : 'source_range';
  }

  /**
   * `sample`, recording the walk: every rule visited, by its line in the
   * iptables text, and whether it matched (its target then ran).
   */
  trace(pkt: PacketTuple | PacketTuple6, nowMs: number): { sample: LinearSample; steps: Array<{ line: number; matched: boolean }> } {
    const steps: Array<{ line: number; matched: boolean }> = [];
    this.tracer = (line, matched) => steps.push({ line, matched });
    try {
      const s = typeof pkt.src === 'number' ? this.sample(pkt as PacketTuple, nowMs) : this.sample6(pkt as PacketTuple6, nowMs);
      return { sample: { ...s, endpointAddr6: s.endpointAddr6.slice() }, steps };
    } finally {
      this.tracer = null;
    }
  }

  /**
   * The kernel's answer for one packet, drawing at `statistic` rules and
   * keeping `recent` lists (ClientIP affinity). `nowMs` is the clock in
   * milliseconds (recent --seconds compares against it). The returned object
   * is reused by the next call.
   */
  sample(pkt: PacketTuple, nowMs: number): LinearSample {
    if (this.family !== 4) throw new Error('sample: this evaluator holds ip6tables rules; use sample6 with a PacketTuple6');
    this.enumerate = false;
    this.now = nowMs;
    this.cur4 = pkt;
    this.run(this.result);
    this.rulesVisited += this.visits;
    return this.result;
  }

  /** `sample` for an IPv6 packet through ip6tables rules (SampleDecider6). The returned object is reused by the next call. */
  sample6(pkt: PacketTuple6, nowMs: number): LinearSample {
    if (this.family !== 6) throw new Error('sample6: this evaluator holds IPv4 iptables rules; use sample with a PacketTuple');
    this.enumerate = false;
    this.now = nowMs;
    this.cur6 = pkt;
    this.run(this.result);
    this.rulesVisited += this.visits;
    return this.result;
  }

  /** `evaluate` for an IPv6 packet through ip6tables rules; endpoints are `[address]:port`. */
  evaluate6(pkt: PacketTuple6): Verdict {
    if (this.family !== 6) throw new Error('evaluate6: this evaluator holds IPv4 iptables rules; use evaluate with a PacketTuple');
    this.cur6 = pkt;
    return this.enumerateAll();
  }

  /**
   * Every way the packet can go, with its probability: both branches of each
   * `statistic` rule (the kernel's probability, round(p·2^31)/2^31), no
   * affinity state. DNAT candidates are in the order the chain reaches them.
   * If some branches DNAT and others do not (not in rules kube-proxy writes),
   * the answer is the DNAT candidates alone, their probabilities summing to
   * less than 1.
   */
  evaluate(pkt: PacketTuple): Verdict {
    if (this.family !== 4) throw new Error('evaluate: this evaluator holds ip6tables rules; use evaluate6 with a PacketTuple6');
    this.cur4 = pkt;
    return this.enumerateAll();
  }

  private enumerateAll(): Verdict {
    this.enumerate = true;
    const candidates: Candidate[] = [];
    const byEndpoint = new Map<string, Candidate>();
    let service = '';
    let affinity = 0;
    let other: Verdict | null = null;
    const out: LinearSample = { ...this.result, endpointAddr6: new Uint32Array(4) };
    const explore = (prefix: boolean[], probability: number): void => {
      if (probability === 0) return;
      this.decisions = prefix;
      this.cursor = 0;
      if (!this.run(out)) {
        const p = this.branchProbability;
        explore([...prefix, true], probability * p);
        explore([...prefix, false], probability * (1 - p));
        return;
      }
      this.rulesVisited += this.visits;
      if (affinity === 0) affinity = this.affinitySeconds;
      if (out.kind === 'dnat') {
        if (service === '') service = out.service;
        const seen = byEndpoint.get(out.endpoint);
        if (seen) seen.probability += probability;
        else {
          const c: Candidate = { endpoint: out.endpoint, probability, masquerade: out.masquerade };
          byEndpoint.set(out.endpoint, c);
          candidates.push(c);
        }
      } else if (other === null) {
        other =
          out.kind === 'reject'
            ? { kind: 'reject', service: out.service }
            : out.kind === 'drop'
              ? { kind: 'drop', service: out.service, reason: out.reason! }
              : { kind: 'nomatch' };
      }
    };
    try {
      explore([], 1);
    } finally {
      this.enumerate = false;
      this.decisions = [];
    }
    if (candidates.length > 0) return { kind: 'dnat', service, affinitySeconds: affinity, candidates };
    return other ?? { kind: 'nomatch' };
  }

  /** Forget all `recent` list entries (ClientIP affinity state). */
  clearAffinity(): void {
    for (const l of this.recentLists) l.clear();
  }
}

/** Parse iptables-save text (`family: 6`: ip6tables-save text; default: told from the text) and build an evaluator; throws on parse errors, naming the first lines. */
export function linearFromText(text: string, opts: LinearOptions & { family?: 4 | 6 }): LinearEvaluator {
  const parsed = parseIptablesSave(text, { family: opts.family ?? detectFamily(text) });
  if (parsed.errors.length > 0) {
    const first = parsed.errors.slice(0, 3).map((e) => `line ${e.line}: ${e.message}`).join('; ');
    throw new Error(`iptables text does not parse (${parsed.errors.length} errors): ${first}`);
  }
  return new LinearEvaluator(parsed, opts);
}
