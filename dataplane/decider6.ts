/**
 * The IPv6 side of the decider contract (dataplane/verdict.ts is the IPv4
 * one): what a decider sees of an IPv6 packet and what it answers. The
 * linear walk of kube-proxy's ip6tables rules (control/iptables/linear.ts,
 * an evaluator built from an `ip6tables-save` parse) implements
 * SampleDecider6 and, as the test oracle, `evaluate6(PacketTuple6): Verdict`.
 *
 * Addresses are four uint32 words in network order (dataplane/addr6.ts):
 * 2001:db8::1 = [0x20010db8, 0, 0, 1]. A packet path keeps one PacketTuple6
 * (newPacketTuple6) and writes the words into its arrays: no allocation per
 * packet. A Verdict candidate's endpoint text for IPv6 is kube-proxy's
 * `[fd00::1]:8080` (net.JoinHostPort, as ip6tables-save prints
 * `--to-destination`), the address in RFC 5952 form (formatIPv6).
 */
import type { VerdictDropReason } from './verdict.ts';

/** An IPv6 packet as the deciders see it (the first packet of a flow). For ICMPv6 (proto 58): sport = type, dport = code. */
export interface PacketTuple6 {
  proto: number;
  /** source address: 4 words, network order */
  readonly src: Uint32Array;
  /** destination address: 4 words, network order */
  readonly dst: Uint32Array;
  sport: number;
  dport: number;
}

/** A tuple with its own address arrays, to be reused packet after packet. */
export function newPacketTuple6(): PacketTuple6 {
  return { proto: 0, src: new Uint32Array(4), dst: new Uint32Array(4), sport: 0, dport: 0 };
}

/** A decider's answer for one IPv6 packet (reused by the next call: copy what you keep). */
export interface DeciderSample6 {
  kind: 'dnat' | 'reject' | 'drop' | 'nomatch';
  service: string;
  reason: VerdictDropReason | null;
  /** the chosen endpoint's address, 4 words (valid when kind is 'dnat') */
  endpointAddr6: Uint32Array;
  endpointPort: number;
  masquerade: boolean;
  rulesVisited: number;
}

/** SampleDecider (dataplane/verdict.ts) for IPv6 packets: draws at random rules and keeps affinity lists as the kernel does. */
export interface SampleDecider6 {
  sample6(pkt: PacketTuple6, nowMs: number): DeciderSample6;
}
