/**
 * Protocol state for the connection table: netfilter's states, their default
 * timeouts, and the TCP transition table (nf_conntrack_proto_tcp.c,
 * tcp_conntracks[dir][index][state]). No I/O, no allocation.
 *
 * State numbers are the kernel's (enum tcp_conntrack, enum sctp_conntrack), so
 * they read the same in a snapshot as in ctnetlink.
 */

import { PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from './addr.ts';

// ---- TCP states (enum tcp_conntrack) -------------------------------------

export const TCP_CT_NONE = 0;
export const TCP_CT_SYN_SENT = 1;
export const TCP_CT_SYN_RECV = 2;
export const TCP_CT_ESTABLISHED = 3;
export const TCP_CT_FIN_WAIT = 4;
export const TCP_CT_CLOSE_WAIT = 5;
export const TCP_CT_LAST_ACK = 6;
export const TCP_CT_TIME_WAIT = 7;
export const TCP_CT_CLOSE = 8;
/** simultaneous open (TCP_CONNTRACK_SYN_SENT2, once LISTEN) */
export const TCP_CT_SYN_SENT2 = 9;
/** not a state: the transition table's "invalid" (sIV) */
export const TCP_CT_INVALID = 10;
/** not a state: the transition table's "ignore" (sIG) */
export const TCP_CT_IGNORE = 11;

export const TCP_STATE_NAMES: readonly string[] = [
  'NONE',
  'SYN_SENT',
  'SYN_RECV',
  'ESTABLISHED',
  'FIN_WAIT',
  'CLOSE_WAIT',
  'LAST_ACK',
  'TIME_WAIT',
  'CLOSE',
  'SYN_SENT2',
];

// ---- SCTP states (enum sctp_conntrack; the simple model uses four) -------

export const SCTP_CT_NONE = 0;
export const SCTP_CT_CLOSED = 1;
export const SCTP_CT_COOKIE_WAIT = 2;
export const SCTP_CT_ESTABLISHED = 4;

export const SCTP_STATE_NAMES: readonly string[] = [
  'NONE',
  'CLOSED',
  'COOKIE_WAIT',
  'COOKIE_ECHOED',
  'ESTABLISHED',
  'SHUTDOWN_SENT',
  'SHUTDOWN_RECD',
  'SHUTDOWN_ACK_SENT',
  'HEARTBEAT_SENT',
];

/** SCTP chunk types that end an association (RFC 9260 §3.2; wire/sctp.ts has them all) */
export const SCTP_CLOSING_CHUNK_ABORT = 6;
export const SCTP_CLOSING_CHUNK_SHUTDOWN_COMPLETE = 14;

/** The state's name as `conntrack -L` prints it, '' for protocols without one (UDP, ICMP). */
export function stateName(proto: number, state: number): string {
  if (proto === PROTO_TCP) return TCP_STATE_NAMES[state] ?? '';
  if (proto === PROTO_SCTP) return SCTP_STATE_NAMES[state] ?? '';
  return '';
}

/** Inverse of stateName; -1 when the name is not a state of that protocol. */
export function stateNumber(proto: number, name: string): number {
  if (proto === PROTO_TCP) return TCP_STATE_NAMES.indexOf(name);
  if (proto === PROTO_SCTP) return SCTP_STATE_NAMES.indexOf(name);
  return name === '' ? 0 : -1;
}

// ---- timeouts --------------------------------------------------------------

/** Milliseconds. Defaults are netfilter's (net.netfilter.nf_conntrack_*_timeout_*). */
export interface Timeouts {
  tcpSynSent: number;
  tcpSynRecv: number;
  tcpEstablished: number;
  tcpFinWait: number;
  tcpCloseWait: number;
  tcpLastAck: number;
  tcpTimeWait: number;
  tcpClose: number;
  tcpSynSent2: number;
  /**
   * nf_conntrack_tcp_timeout_unacknowledged: caps ESTABLISHED for a flow
   * picked up mid-stream (first packet an ACK) until a reply is seen.
   */
  tcpUnacknowledged: number;
  /** nf_conntrack_udp_timeout: no reply yet, or a reply within 2 s of the first packet */
  udp: number;
  /** nf_conntrack_udp_timeout_stream: traffic both ways, still active after 2 s */
  udpStream: number;
  /** nf_conntrack_icmp_timeout */
  icmp: number;
  /** SCTP, simple model: no reply yet (COOKIE_WAIT) */
  sctpUnreplied: number;
  /** SCTP, simple model: a reply seen (ESTABLISHED) */
  sctpEstablished: number;
  /** SCTP, simple model: ABORT or SHUTDOWN COMPLETE seen (CLOSED) */
  sctpClosed: number;
}

const SECS = 1000;
const MINS = 60 * SECS;
const DAYS = 24 * 60 * MINS;

export const DEFAULT_TIMEOUTS: Readonly<Timeouts> = Object.freeze({
  tcpSynSent: 2 * MINS,
  tcpSynRecv: 60 * SECS,
  tcpEstablished: 5 * DAYS,
  tcpFinWait: 2 * MINS,
  tcpCloseWait: 60 * SECS,
  tcpLastAck: 30 * SECS,
  tcpTimeWait: 2 * MINS,
  tcpClose: 10 * SECS,
  tcpSynSent2: 2 * MINS,
  tcpUnacknowledged: 5 * MINS,
  udp: 30 * SECS,
  udpStream: 120 * SECS,
  icmp: 30 * SECS,
  sctpUnreplied: 30 * SECS,
  sctpEstablished: 5 * DAYS,
  sctpClosed: 10 * SECS,
});

/** UDP: a flow still active this long after its first packet, with a reply seen, is a stream (nf_conntrack_udp_packet's stream_ts). */
export const UDP_STREAM_AFTER_MS = 2 * SECS;

/** Merge and check timeouts; throws naming the field when a value is not a positive finite number. */
export function resolveTimeouts(partial: Partial<Timeouts> | undefined): Timeouts {
  const t: Timeouts = { ...DEFAULT_TIMEOUTS };
  if (partial === undefined) return t;
  for (const [name, value] of Object.entries(partial)) {
    if (!(name in DEFAULT_TIMEOUTS)) {
      throw new Error(`conntrack timeouts: unknown field "${name}" (known: ${Object.keys(DEFAULT_TIMEOUTS).join(', ')})`);
    }
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw new Error(`conntrack timeouts: ${name} must be a positive number of milliseconds, got ${String(value)}`);
    }
    t[name as keyof Timeouts] = value;
  }
  return t;
}

/** TCP timeouts indexed by state number (NONE has none: a flow leaves it on its first packet). */
export function tcpTimeoutTable(t: Timeouts): Float64Array {
  const a = new Float64Array(10);
  a[TCP_CT_NONE] = t.tcpSynSent;
  a[TCP_CT_SYN_SENT] = t.tcpSynSent;
  a[TCP_CT_SYN_RECV] = t.tcpSynRecv;
  a[TCP_CT_ESTABLISHED] = t.tcpEstablished;
  a[TCP_CT_FIN_WAIT] = t.tcpFinWait;
  a[TCP_CT_CLOSE_WAIT] = t.tcpCloseWait;
  a[TCP_CT_LAST_ACK] = t.tcpLastAck;
  a[TCP_CT_TIME_WAIT] = t.tcpTimeWait;
  a[TCP_CT_CLOSE] = t.tcpClose;
  a[TCP_CT_SYN_SENT2] = t.tcpSynSent2;
  return a;
}

/** The lifetime a freshly inserted flow gets before its first update(). */
export function initialTimeout(t: Timeouts, proto: number): number {
  switch (proto) {
    case PROTO_TCP:
      return t.tcpSynSent;
    case PROTO_UDP:
      return t.udp;
    case PROTO_ICMP:
      return t.icmp;
    default:
      return t.sctpUnreplied;
  }
}

// ---- the TCP transition table ---------------------------------------------

/** get_conntrack_index(): which row of the table a segment's flags select. */
export const TCP_SYN_SET = 0;
export const TCP_SYNACK_SET = 1;
export const TCP_FIN_SET = 2;
export const TCP_ACK_SET = 3;
export const TCP_RST_SET = 4;
export const TCP_NONE_SET = 5;

const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;
const URG = 0x20;

/** tcp_conntracks[dir][index][state], flattened: (dir * 6 + index) * 10 + state. */
const sNO = TCP_CT_NONE;
const sSS = TCP_CT_SYN_SENT;
const sSR = TCP_CT_SYN_RECV;
const sES = TCP_CT_ESTABLISHED;
const sFW = TCP_CT_FIN_WAIT;
const sCW = TCP_CT_CLOSE_WAIT;
const sLA = TCP_CT_LAST_ACK;
const sTW = TCP_CT_TIME_WAIT;
const sCL = TCP_CT_CLOSE;
const sS2 = TCP_CT_SYN_SENT2;
const sIV = TCP_CT_INVALID;
const sIG = TCP_CT_IGNORE;

// prettier-ignore
const TCP_TRANSITIONS = Uint8Array.from([
  // ORIGINAL     sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2
  /* syn    */    sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2,
  /* synack */    sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR,
  /* fin    */    sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV,
  /* ack    */    sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV,
  /* rst    */    sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL,
  /* none   */    sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV,
  // REPLY        sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2
  /* syn    */    sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2,
  /* synack */    sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR,
  /* fin    */    sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV,
  /* ack    */    sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG,
  /* rst    */    sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL,
  /* none   */    sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV,
]);

/** get_conntrack_index(): RST, then SYN (with or without ACK), then FIN, then ACK. */
export function tcpFlagsIndex(flags: number): number {
  if ((flags & RST) !== 0) return TCP_RST_SET;
  if ((flags & SYN) !== 0) return (flags & ACK) !== 0 ? TCP_SYNACK_SET : TCP_SYN_SET;
  if ((flags & FIN) !== 0) return TCP_FIN_SET;
  if ((flags & ACK) !== 0) return TCP_ACK_SET;
  return TCP_NONE_SET;
}

/** The table's next state for (direction, flags index, state): a state, TCP_CT_INVALID or TCP_CT_IGNORE. */
export function tcpNextState(direction: number, index: number, state: number): number {
  return TCP_TRANSITIONS[(direction * 6 + index) * 10 + state];
}

/**
 * tcp_error()'s tcp_valid_flags: flag combinations a TCP may send, after
 * masking ECE, CWR and PSH. Anything else (SYN+FIN, a bare FIN, no flags...)
 * makes the segment INVALID.
 */
const TCP_VALID_FLAGS = (() => {
  const v = new Uint8Array(64);
  for (const f of [SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG]) v[f] = 1;
  return v;
})();

export function tcpFlagsValid(flags: number): boolean {
  return TCP_VALID_FLAGS[flags & (FIN | SYN | RST | ACK | URG)] === 1;
}
