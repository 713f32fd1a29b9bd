/**
 * Verdicts. What the packet path does with a packet (V_*: Pipeline.process's
 * answer, counted by name), and the answer both deciders give for the first
 * packet of a flow: the compiled
 * hash tables (dataplane/tables.ts) and the linear walk of kube-proxy's
 * iptables chains (control/iptables/linear.ts). Each is the other's oracle.
 *
 * `service` is kube-proxy's service-port name: "namespace/name:portName"
 * ("namespace/name" when the port has no name), as in its rule comments.
 */

/**
 * What the packet path does with a packet (Pipeline.process's answer), by
 * index: the counters count packets and bytes under these names.
 */
export const VERDICTS = ['forward', 'reply', 'drop', 'pass'] as const;
export type VerdictName = (typeof VERDICTS)[number];
/** translated in place: write it back */
export const V_FORWARD = 0;
/** answered by a generated packet (ICMP port unreachable, ...): write Pipeline.reply instead */
export const V_REPLY = 1;
/** dropped, with a named reason (Pipeline.lastDrop and the drop counters) */
export const V_DROP = 2;
/** not ours (not a service, not a tracked flow): written back unchanged */
export const V_PASS = 3;

export interface Candidate {
  /** "10.64.1.7:53" */
  endpoint: string;
  /** chance that a new flow picks this endpoint (sums to 1 over candidates) */
  probability: number;
  /** SNAT applies when this endpoint is chosen (KUBE-MARK-MASQ reached: off-cluster source, external traffic, hairpin) */
  masquerade: boolean;
}

/** Why a decider's verdict drops a new flow (a policy of the rule set); the packet path counts these among its PacketDropReasons (dataplane/counters.ts). */
export type VerdictDropReason =
  /** internal/externalTrafficPolicy Local and no endpoint on this node ("has no local endpoints") */
  | 'no_local_endpoints'
  /** loadBalancerSourceRanges did not admit the source (KUBE-FW-*, KUBE-PROXY-FIREWALL) */
  | 'source_range';

export type Verdict =
  | { kind: 'nomatch' }
  /** service without endpoints: ICMP port unreachable, as kube-proxy's REJECT */
  | { kind: 'reject'; service: string }
  | { kind: 'drop'; service: string; reason: VerdictDropReason }
  | {
      kind: 'dnat';
      service: string;
      /** ClientIP session affinity timeout in seconds, 0 when none */
      affinitySeconds: number;
      /** in rule order (the order of the KUBE-SVC-/KUBE-SVL- chain) */
      candidates: Candidate[];
    };

/** A packet as the deciders see it (the first packet of a flow). Addresses are numbers (dataplane/addr.ts). */
export interface PacketTuple {
  proto: number;
  src: number;
  dst: number;
  sport: number;
  dport: number;
}

/**
 * A decider that walks rules for one packet at a time and draws at random
 * rules as the kernel does (control/iptables/linear.ts's LinearEvaluator).
 * `tunproxy run --decider linear` sets one as the pipeline's `linear` option
 * (with each rule set's tables), and the packet path then asks it instead of
 * the hash tables: the same traffic through kube-proxy's linear chains, in
 * the same process.
 */
export interface DeciderSample {
  kind: 'dnat' | 'reject' | 'drop' | 'nomatch';
  service: string;
  reason: VerdictDropReason | null;
  endpointAddr: number;
  endpointPort: number;
  masquerade: boolean;
  rulesVisited: number;
}

export interface SampleDecider {
  /** the answer object may be reused by the next call */
  sample(pkt: PacketTuple, nowMs: number): DeciderSample;
}
