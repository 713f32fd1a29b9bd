/**
 * Named counters on a Float64Array: incremented on the hot path by index,
 * read by name off it. Every verdict (dataplane/verdict.ts) and every drop
 * reason has one.
 */
import { VERDICTS } from './verdict.ts';
import type { VerdictName } from './verdict.ts';

/** Why a packet was dropped. Each has a counter; nothing is dropped silently. */
export const DROP_REASONS = [
  /** a header inconsistent with itself or the buffer (see malformed detail counters) */
  'malformed',
  /** externalTrafficPolicy/internalTrafficPolicy Local and no endpoint on this node */
  'no_local_endpoints',
  /** loadBalancerSourceRanges did not admit the source */
  'source_range',
  /** the connection table refused the flow (hash collision with a live flow) */
  'conntrack_collision',
  /** no free masquerade source port for this endpoint */
  'nat_port_exhausted',
  /** a later IP fragment whose first fragment was not seen, addressed to a service */
  'fragment_no_flow',
  /** a REJECT that may not be answered (the packet was itself an ICMP error, a fragment, broadcast...) */
  'no_endpoints',
  /** SCTP to an SCTP service whose CRC could not be recomputed (a fragmented SCTP packet) */
  'sctp_fragmented',
  /** IPv6: the flow must be masqueraded and the node has no IPv6 masquerade address */
  'ipv6_no_masquerade_address',
  /** the connection table was full of assured flows where its eviction hand looked (netfilter: "table full, dropping packet") */
  'conntrack_full',
] as const;
/** Why the packet path dropped a packet: one counter each (a decider's VerdictDropReason is one of them). */
export type PacketDropReason = (typeof DROP_REASONS)[number];
export const D_MALFORMED = 0;
export const D_NO_LOCAL_ENDPOINTS = 1;
export const D_SOURCE_RANGE = 2;
export const D_CONNTRACK_COLLISION = 3;
export const D_NAT_PORT_EXHAUSTED = 4;
export const D_FRAGMENT_NO_FLOW = 5;
export const D_NO_ENDPOINTS = 6;
export const D_SCTP_FRAGMENTED = 7;
export const D_IPV6_NO_MASQUERADE_ADDRESS = 8;
export const D_CONNTRACK_FULL = 9;

/** What else is counted (not verdicts): how the packets were handled. */
export const EVENTS = [
  'non_ipv4',
  'new_flows',
  'established',
  'replies',
  'rejected',
  'icmp_errors_translated',
  'fragments_translated',
  'masqueraded',
  'hairpin',
  'affinity_hits',
  'lookups',
  /** GSO super-packets from the TUN (virtio header with a GSO type) */
  'gso_super_packets',
  /** the segments those super-packets stand for on the wire (also what the verdict counters count) */
  'gso_segments',
  /** partial checksums (NEEDS_CSUM) on other protocols than TCP/UDP, completed in software */
  'checksums_completed',
  /** super-packets segmented in software (to quote the first segment in an ICMP error) */
  'gso_segmented',
  /** IPv6 packets handled by the IPv6 path (tables with IPv6 services or node addresses) */
  'ipv6_packets',
] as const;
export type EventName = (typeof EVENTS)[number];
export const E_NON_IPV4 = 0;
export const E_NEW_FLOWS = 1;
export const E_ESTABLISHED = 2;
export const E_REPLIES = 3;
export const E_REJECTED = 4;
export const E_ICMP_ERRORS = 5;
export const E_FRAGMENTS = 6;
export const E_MASQUERADED = 7;
export const E_HAIRPIN = 8;
export const E_AFFINITY_HITS = 9;
export const E_LOOKUPS = 10;
export const E_GSO_SUPER_PACKETS = 11;
export const E_GSO_SEGMENTS = 12;
export const E_CHECKSUMS_COMPLETED = 13;
export const E_GSO_SEGMENTED = 14;
export const E_IPV6 = 15;

export class Counters {
  readonly packets = new Float64Array(VERDICTS.length);
  readonly bytes = new Float64Array(VERDICTS.length);
  readonly drops = new Float64Array(DROP_REASONS.length);
  readonly events = new Float64Array(EVENTS.length);
  /** malformed packets by wire error name ("bad_ihl", "too_short", ...) */
  readonly malformed = new Map<string, number>();

  snapshot(): {
    packets: Record<VerdictName, number>;
    bytes: Record<VerdictName, number>;
    drops: Record<PacketDropReason, number>;
    events: Record<EventName, number>;
    malformed: Record<string, number>;
  } {
    const rec = <K extends string>(names: readonly K[], a: Float64Array) => Object.fromEntries(names.map((n, i) => [n, a[i]])) as Record<K, number>;
    return {
      packets: rec(VERDICTS, this.packets),
      bytes: rec(VERDICTS, this.bytes),
      drops: rec(DROP_REASONS, this.drops),
      events: rec(EVENTS, this.events),
      malformed: Object.fromEntries(this.malformed),
    };
  }
}
