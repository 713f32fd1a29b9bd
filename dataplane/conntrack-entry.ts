/**
 * A tracked flow (ConntrackEntry), what the NAT records for it
 * (ConntrackInfo) and the tuple hash the table's index is keyed by.
 * Split out of conntrack.ts (the table core), which re-exports all of it.
 */

/** What the NAT chose for a new flow. */
export interface ConntrackInfo {
  /** kube-proxy's service-port name "namespace/name:port" ('' when none); stored by reference */
  serviceName: string;
  /** index of the service in the compiled tables (-1 when none) */
  serviceIndex: number;
  /** the endpoint (DNAT destination); must equal the reply tuple's source */
  endpointAddr: number;
  /** the endpoint port; must equal the reply tuple's source port (ignored for ICMP) */
  endpointPort: number;
  /** SNAT applied: the reply tuple's destination is the masquerade address and port */
  masquerade: boolean;
}

/** A flow. Tuple fields are immutable; addresses read as unsigned 32-bit numbers. */
export class ConntrackEntry {
  readonly proto: number;
  /** @internal addresses are stored as int32 so they stay small integers in V8 (no boxed doubles) */
  _origSrc: number;
  /** @internal */
  _origDst: number;
  readonly origSport: number;
  readonly origDport: number;
  /** @internal */
  _replySrc: number;
  /** @internal */
  _replyDst: number;
  readonly replySport: number;
  readonly replyDport: number;
  /** ms; the flow is dead when expires <= now */
  expires: number;
  /** @internal second-chance bit for eviction: set by lookup hits */
  _touched: number;
  /** TCP: TCP_CT_*; SCTP: SCTP_CT_*; UDP, ICMP: 0 */
  state: number;
  /** a packet was seen in the reply direction (IPS_SEEN_REPLY; not [UNREPLIED]) */
  seenReply: boolean;
  /** [ASSURED] (IPS_ASSURED) */
  assured: boolean;
  /** false once removed from the table (expired, evicted, deleted) */
  live: boolean;
  /** ms; first packet (UDP stream detection, snapshot age) */
  created: number;
  origPackets: number;
  origBytes: number;
  replyPackets: number;
  replyBytes: number;
  serviceName: string;
  serviceIndex: number;
  masquerade: boolean;
  /** @internal position in the table's dense flow array */
  _slot: number;

  constructor(
    proto: number,
    origSrc: number,
    origDst: number,
    origSport: number,
    origDport: number,
    replySrc: number,
    replyDst: number,
    replySport: number,
    replyDport: number,
    now: number,
    expires: number,
    serviceName: string,
    serviceIndex: number,
    masquerade: boolean,
  ) {
    this.proto = proto;
    this._origSrc = origSrc | 0;
    this._origDst = origDst | 0;
    this.origSport = origSport;
    this.origDport = origDport;
    this._replySrc = replySrc | 0;
    this._replyDst = replyDst | 0;
    this.replySport = replySport;
    this.replyDport = replyDport;
    this.expires = expires;
    this._touched = 0;
    this.state = 0;
    this.seenReply = false;
    this.assured = false;
    this.live = true;
    this.created = now;
    this.origPackets = 0;
    this.origBytes = 0;
    this.replyPackets = 0;
    this.replyBytes = 0;
    this.serviceName = serviceName;
    this.serviceIndex = serviceIndex;
    this.masquerade = masquerade;
    this._slot = -1;
  }

  get origSrc(): number {
    return this._origSrc >>> 0;
  }
  get origDst(): number {
    return this._origDst >>> 0;
  }
  get replySrc(): number {
    return this._replySrc >>> 0;
  }
  get replyDst(): number {
    return this._replyDst >>> 0;
  }
  /** the endpoint is the reply tuple's source */
  get endpointAddr(): number {
    return this._replySrc >>> 0;
  }
  get endpointPort(): number {
    return this.replySport;
  }
}

// ---- hashing -------------------------------------------------------------------

function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * The 64-bit hash of a tuple as two int32 halves, written to out[0] (hi) and
 * out[1] (lo): two seeded murmur3 mixes of (proto, src, dst, sport << 16 | dport).
 */
export function conntrackHash(seed: number, proto: number, src: number, dst: number, sport: number, dport: number, out: Int32Array): void {
  const ports = (sport << 16) | (dport & 0xffff);
  let a = seed ^ proto;
  a = mix(a, src);
  a = mix(a, dst);
  a = mix(a, ports);
  let b = (seed ^ 0x9e3779b9 ^ (proto << 24)) | 0;
  b = mix(b, ports);
  b = mix(b, src);
  b = mix(b, dst);
  out[0] = fmix(a ^ 13);
  out[1] = fmix(b ^ 13);
}
