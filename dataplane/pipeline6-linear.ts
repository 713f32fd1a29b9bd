/**
 * `tunproxy run --decider linear` for IPv6 packets: a new IPv6 flow decided
 * by walking kube-proxy's ip6tables rules (a SampleDecider6: the linear
 * evaluator built from an `ip6tables-restore` text, control/iptables/linear.ts)
 * instead of the hash tables: what pipeline.ts's newFlowLinear does for IPv4.
 *
 * Pipeline6.newFlow hands the packet here when its host (the Pipeline) has
 * `linear6` set; the tables then serve only the node's IPv6 masquerade
 * address. The rest is Pipeline6.newFlow's: the walk's DNAT goes into
 * Conntrack6 with a reply tuple (endpoint → masquerade address | client,
 * keeping the client's port when it is free, else a random free one), the
 * packet is rewritten in place (partial checksums kept partial), REJECT is
 * ICMPv6 port unreachable, DROP counts under the walk's reason.
 *
 * Kept out of pipeline6.ts, so the IPv6 hot path stays as it is (one branch
 * in its newFlow). A comparison mode: correctness over speed, still no
 * allocation per packet.
 */
import { PROTO_SCTP } from './addr.ts';
import type { Conntrack6 } from './conntrack6.ts';
import { CT6_REPLY_DST, CT6_REPLY_SRC } from './conntrack6.ts';
import {
  D_CONNTRACK_COLLISION, D_IPV6_NO_MASQUERADE_ADDRESS, D_NAT_PORT_EXHAUSTED, D_NO_ENDPOINTS, D_NO_LOCAL_ENDPOINTS,
  D_SCTP_FRAGMENTED, D_SOURCE_RANGE, E_HAIRPIN, E_MASQUERADED, E_NEW_FLOWS, E_REJECTED,
} from './counters.ts';
import { newPacketTuple6, type SampleDecider6 } from './decider6.ts';
import type { FragmentTable6 } from './fragments.ts';
import type { Pipeline6Host } from './pipeline6.ts';
import type { Tables6 } from './tables6.ts';
import { V_DROP, V_FORWARD, V_PASS, V_REPLY } from './verdict.ts';
import { get32 } from './wire/bytes.ts';
import { buildIcmpv6Error, icmpv6ErrorPermitted } from './wire/icmpv6.ts';
import type { Ipv6Chain } from './wire/ipv6.ts';
import { rewriteBoth6, rewriteDst6, rewriteSrc6 } from './wire/ipv6-rewrite.ts';

const DIR_ORIGINAL = 0;
const FRAG_IDENT = 4;
const ICMPV6_DEST_UNREACH = 1;
const ICMPV6_PORT_UNREACH = 4;

// one thread moves packets through one walk at a time: scratch shared by every Pipeline6 of the thread
const tuple = newPacketTuple6();
const tw = new Uint32Array(16);
const info = { serviceName: '', serviceIndex: -1, masquerade: false };

function drop(host: Pipeline6Host, reason: number, len: number): number {
  const c = host.counters;
  c.drops[reason]++;
  c.packets[V_DROP]++;
  c.bytes[V_DROP] += len;
  host.lastDrop = reason;
  return V_DROP;
}

function verdict(host: Pipeline6Host, v: number, len: number): number {
  const c = host.counters;
  c.packets[v]++;
  c.bytes[v] += len;
  return v;
}

/**
 * A new IPv6 flow decided by `linear`: the packet at buf[off..off+total)
 * (its chain walked into `c`, its source at w[0..4) and destination at
 * w[4..8), TCP/UDP/SCTP ports and first flags byte as Pipeline6.process
 * read them). Returns the verdict, as Pipeline6.newFlow.
 */
export function newFlowLinear6(
  linear: SampleDecider6, host: Pipeline6Host, ct: Conntrack6, fragments: FragmentTable6, c: Ipv6Chain, w: Uint32Array, partial: boolean,
  t6: Tables6, buf: Uint8Array, off: number, total: number, proto: number, sport: number, dport: number, flags: number, now: number,
): number {
  const p = tuple;
  p.proto = proto;
  p.sport = sport;
  p.dport = dport;
  for (let i = 0; i < 4; i++) {
    p.src[i] = w[i];
    p.dst[i] = w[4 + i];
  }
  const s = linear.sample6(p, now);
  if (s.kind === 'reject') {
    if (!icmpv6ErrorPermitted(buf, off, c, ICMPV6_DEST_UNREACH)) return drop(host, D_NO_ENDPOINTS, total);
    const n = buildIcmpv6Error(host.reply, 0, buf, off, total, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, w, 4, 0, host.reply.length);
    if (n <= 0) return drop(host, D_NO_ENDPOINTS, total);
    host.replyLen = n;
    host.counters.events[E_REJECTED]++;
    return verdict(host, V_REPLY, total);
  }
  if (s.kind === 'drop') return drop(host, s.reason === 'no_local_endpoints' ? D_NO_LOCAL_ENDPOINTS : D_SOURCE_RANGE, total);
  if (s.kind !== 'dnat') return verdict(host, V_PASS, total);
  if (proto === PROTO_SCTP && c.moreFragments !== 0) return drop(host, D_SCTP_FRAGMENTED, total);
  const ep = s.endpointAddr6;
  const epPort = s.endpointPort;
  const hairpin = ep[0] === w[0] && ep[1] === w[1] && ep[2] === w[2] && ep[3] === w[3];
  // the walk's KUBE-MARK-MASQ (hairpin included: KUBE-SEP's -s rule)
  const masquerade = s.masquerade;
  // the tuple: original (src, dst), reply (endpoint, masquerade address | client)
  for (let i = 0; i < 8; i++) tw[i] = w[i];
  for (let i = 0; i < 4; i++) tw[CT6_REPLY_SRC + i] = ep[i];
  if (masquerade) {
    if (t6.masqId < 0) return drop(host, D_IPV6_NO_MASQUERADE_ADDRESS, total);
    const words = t6.words;
    for (let i = 0; i < 4; i++) tw[CT6_REPLY_DST + i] = words[t6.masqId * 4 + i];
  } else {
    for (let i = 0; i < 4; i++) tw[CT6_REPLY_DST + i] = w[i];
  }
  let replyDport = sport;
  if (ct.isTupleInUse6(proto, tw, CT6_REPLY_SRC, CT6_REPLY_DST, epPort, replyDport)) {
    replyDport = -1;
    // a source port no tracked flow uses for (endpoint → masquerade address), like nf_nat's random-fully
    for (let tries = 0; tries < 256; tries++) {
      const q = 1024 + host.rng.below(65536 - 1024);
      if (!ct.isTupleInUse6(proto, tw, CT6_REPLY_SRC, CT6_REPLY_DST, epPort, q)) {
        replyDport = q;
        break;
      }
    }
    if (replyDport < 0) return drop(host, D_NAT_PORT_EXHAUSTED, total);
  }
  info.serviceName = s.service;
  info.serviceIndex = -1; // decided by the walk: no tables entry
  info.masquerade = masquerade;
  const entry = ct.insert6(proto, tw, sport, dport, epPort, replyDport, now, info);
  if (entry === null) return drop(host, D_CONNTRACK_COLLISION, total);
  const srcChange = masquerade || replyDport !== sport;
  if (partial) {
    rewriteDst6(buf, off, c, tw, CT6_REPLY_SRC, epPort, true);
    if (srcChange) rewriteSrc6(buf, off, c, tw, CT6_REPLY_DST, replyDport, true);
  } else if (srcChange) rewriteBoth6(buf, off, c, tw, CT6_REPLY_SRC, epPort, CT6_REPLY_DST, replyDport);
  else rewriteDst6(buf, off, c, tw, CT6_REPLY_SRC, epPort);
  ct.update(entry, DIR_ORIGINAL, flags, total, now);
  const ev = host.counters.events;
  ev[E_NEW_FLOWS]++;
  if (masquerade) ev[E_MASQUERADED]++;
  if (hairpin) ev[E_HAIRPIN]++;
  if (c.moreFragments !== 0) fragments.remember(w, 0, proto, get32(buf, c.fragHdrOff + FRAG_IDENT), entry, DIR_ORIGINAL, now);
  host.lastEntry = entry;
  return verdict(host, V_FORWARD, total);
}
