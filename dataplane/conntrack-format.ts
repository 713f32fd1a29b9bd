/**
 * `conntrack -L` text for tracked flows (libnetfilter_conntrack's default
 * format). Split out of conntrack.ts, which re-exports it.
 */

import { formatIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';
import { stateName } from './conntrack-state.ts';
import type { ConntrackEntry } from './conntrack-entry.ts';

export interface FormatOptions {
  /** print packets= bytes= after each tuple, as with net.netfilter.nf_conntrack_acct=1 */
  counters?: boolean;
}

const ICMP_ECHO_REQUEST = 8;
const ICMP_ECHO_REPLY = 0;

function protoLabel(proto: number): string {
  switch (proto) {
    case PROTO_TCP:
      return 'tcp      6';
    case PROTO_UDP:
      return 'udp      17';
    case PROTO_ICMP:
      return 'icmp     1';
    case PROTO_SCTP:
      return 'sctp     132';
    default:
      return `${'unknown'.padEnd(8)} ${proto}`;
  }
}

function tupleText(proto: number, src: string, dst: string, sport: number, dport: number, icmpType: number): string {
  const l4 = proto === PROTO_ICMP ? `type=${icmpType} code=0 id=${sport}` : `sport=${sport} dport=${dport}`;
  return `src=${src} dst=${dst} ${l4} `;
}

/** The addresses of a flow as text (the IPv6 table keeps its words outside the entry). */
export interface FlowAddressText {
  origSrc: string;
  origDst: string;
  replySrc: string;
  replyDst: string;
}

/**
 * One line of `conntrack -L` (libnetfilter_conntrack's default format,
 * nf_conntrack_acct off unless options.counters), without the newline:
 *   udp      17 21 src=172.16.1.35 dst=10.32.0.10 sport=44560 dport=53 src=10.64.1.7 dst=10.64.1.1 sport=53 dport=44560 mark=0 use=1
 * The remaining lifetime is whole seconds, rounded down, as the kernel reports it.
 */
export function formatConntrackL(entry: ConntrackEntry, now: number, options?: FormatOptions): string {
  const e = entry;
  return formatLine(e, now, options, e.proto, {
    origSrc: formatIPv4(e.origSrc),
    origDst: formatIPv4(e.origDst),
    replySrc: formatIPv4(e.replySrc),
    replyDst: formatIPv4(e.replyDst),
  });
}

/**
 * The IPv6 line: as formatConntrackL, the addresses given (RFC 5952 text),
 * ICMPv6 echo as `icmpv6   58 … type=128 code=0 id=… type=129 code=0 id=…`
 * (the table keeps an ICMPv6 flow under protocol 1: it is its echo class).
 */
export function formatConntrackL6(entry: ConntrackEntry, now: number, addrs: FlowAddressText, options?: FormatOptions): string {
  return formatLine(entry, now, options, entry.proto === PROTO_ICMP ? 58 : entry.proto, addrs);
}

function formatLine(e: ConntrackEntry, now: number, options: FormatOptions | undefined, shownProto: number, a: FlowAddressText): string {
  const remaining = Math.max(0, Math.floor((e.expires - now) / 1000));
  const v6echo = shownProto === 58;
  let s = `${v6echo ? 'icmpv6   58' : protoLabel(e.proto)} ${remaining} `;
  if (e.proto === PROTO_TCP || e.proto === PROTO_SCTP) s += `${stateName(e.proto, e.state)} `;
  s += tupleText(e.proto, a.origSrc, a.origDst, e.origSport, e.origDport, v6echo ? 128 : ICMP_ECHO_REQUEST);
  if (options?.counters) s += `packets=${e.origPackets} bytes=${e.origBytes} `;
  if (!e.seenReply) s += '[UNREPLIED] ';
  s += tupleText(e.proto, a.replySrc, a.replyDst, e.replySport, e.replyDport, v6echo ? 129 : ICMP_ECHO_REPLY);
  if (options?.counters) s += `packets=${e.replyPackets} bytes=${e.replyBytes} `;
  if (e.assured) s += '[ASSURED] ';
  s += 'mark=0 use=1';
  return s;
}

/** `conntrack -L` for many flows: one line per flow, each ending in "\n". */
export function formatConntrackList(entries: Iterable<ConntrackEntry>, now: number, options?: FormatOptions): string {
  let out = '';
  for (const e of entries) out += formatConntrackL(e, now, options) + '\n';
  return out;
}
