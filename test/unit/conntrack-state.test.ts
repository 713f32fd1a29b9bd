import t from 'tap';
import { parseIPv4, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../../dataplane/addr.ts';
import {
  Conntrack,
  ConntrackEntry,
  CT_DIR_ORIGINAL as O,
  CT_DIR_REPLY as R,
  CT_UPDATE_IGNORED,
  CT_UPDATE_INVALID,
  CT_UPDATE_OK,
  CT_UPDATE_REOPEN,
  DEFAULT_TIMEOUTS,
  SCTP_CT_CLOSED,
  SCTP_CT_COOKIE_WAIT,
  SCTP_CT_ESTABLISHED,
  TCP_CT_CLOSE,
  TCP_CT_CLOSE_WAIT,
  TCP_CT_ESTABLISHED,
  TCP_CT_FIN_WAIT,
  TCP_CT_LAST_ACK,
  TCP_CT_NONE,
  TCP_CT_SYN_RECV,
  TCP_CT_SYN_SENT,
  TCP_CT_SYN_SENT2,
  TCP_CT_TIME_WAIT,
  TCP_STATE_NAMES,
  tcpFlagsValid,
} from '../../dataplane/conntrack.ts';

// TCP header flag bits (byte 13)
const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const PSH = 0x08;
const ACK = 0x10;
const ECE = 0x40;
const CWR = 0x80;

const ip = (s: string): number => parseIPv4(s);
const CLIENT = ip('172.16.1.35');
const VIP = ip('10.32.0.1');
const EP = ip('10.64.0.2');
const MASQ = ip('10.64.1.1');

const SEC = 1000;

function tcpFlow(ct: Conntrack, now = 0): ConntrackEntry {
  return ct.insert(PROTO_TCP, CLIENT, VIP, 40000, 443, EP, MASQ, 6443, 40000, now, {
    serviceName: 'default/kubernetes:https',
    serviceIndex: 0,
    endpointAddr: EP,
    endpointPort: 6443,
    masquerade: true,
  })!;
}

/** lookup in the original direction */
function find(ct: Conntrack, now: number): ConntrackEntry | null {
  return ct.lookup(PROTO_TCP, CLIENT, VIP, 40000, 443, now);
}

type Step = [dir: number, flags: number];

/** Insert a TCP flow and feed it packets one second apart; returns the table, entry and the last packet's time. */
function drive(steps: Step[]): { ct: Conntrack; e: ConntrackEntry; last: number; results: number[] } {
  const ct = new Conntrack({ seed: 1 });
  const e = tcpFlow(ct, 0);
  const results: number[] = [];
  let now = 0;
  for (const [dir, flags] of steps) {
    results.push(ct.update(e, dir, flags, 60, now));
    now += SEC;
  }
  return { ct, e, last: now - SEC, results };
}

const HANDSHAKE: Step[] = [
  [O, SYN],
  [R, SYN | ACK],
  [O, ACK],
];

const STATES: Array<[name: string, state: number, steps: Step[], timeout: number]> = [
  ['SYN_SENT', TCP_CT_SYN_SENT, [[O, SYN]], 120 * SEC],
  ['SYN_RECV', TCP_CT_SYN_RECV, HANDSHAKE.slice(0, 2), 60 * SEC],
  ['ESTABLISHED', TCP_CT_ESTABLISHED, HANDSHAKE, 432000 * SEC],
  ['FIN_WAIT', TCP_CT_FIN_WAIT, [...HANDSHAKE, [O, FIN | ACK]], 120 * SEC],
  ['CLOSE_WAIT', TCP_CT_CLOSE_WAIT, [...HANDSHAKE, [O, FIN | ACK], [R, ACK]], 60 * SEC],
  ['LAST_ACK', TCP_CT_LAST_ACK, [...HANDSHAKE, [O, FIN | ACK], [R, ACK], [R, FIN | ACK]], 30 * SEC],
  ['TIME_WAIT', TCP_CT_TIME_WAIT, [...HANDSHAKE, [O, FIN | ACK], [R, ACK], [R, FIN | ACK], [O, ACK]], 120 * SEC],
  ['CLOSE', TCP_CT_CLOSE, [...HANDSHAKE, [O, RST]], 10 * SEC],
  ['SYN_SENT2', TCP_CT_SYN_SENT2, [[O, SYN], [R, SYN]], 120 * SEC],
];

t.test('every TCP state has netfilter\'s timeout: alive 1 ms before, gone at expiry', async (t) => {
  for (const [name, state, steps, timeout] of STATES) {
    const { ct, e, last } = drive(steps);
    t.equal(TCP_STATE_NAMES[e.state], name, `${name}: state`);
    t.equal(e.state, state);
    t.equal(e.expires, last + timeout, `${name}: expires = last packet + ${timeout / SEC} s`);
    t.equal(find(ct, e.expires - 1), e, `${name}: found just before expiry`);
    t.equal(find(ct, e.expires), null, `${name}: gone at expiry`);
    t.equal(ct.size, 0);
  }
});

t.test('timeouts can be set per state', async (t) => {
  const ct = new Conntrack({ seed: 2, timeouts: { tcpEstablished: 3600 * SEC, tcpTimeWait: 5 * SEC } });
  t.equal(ct.timeouts.tcpEstablished, 3600 * SEC);
  t.equal(ct.timeouts.tcpSynSent, DEFAULT_TIMEOUTS.tcpSynSent);
  const e = tcpFlow(ct);
  ct.update(e, O, SYN, 60, 0);
  ct.update(e, R, SYN | ACK, 60, 0);
  ct.update(e, O, ACK, 60, 0);
  t.equal(e.expires, 3600 * SEC);
});

t.test('handshake, data, FIN from the client: states, flags, counters', async (t) => {
  const ct = new Conntrack({ seed: 3 });
  const e = tcpFlow(ct, 0);
  t.equal(e.state, TCP_CT_NONE, 'NONE until the first packet');
  t.equal(e.expires, 120 * SEC, 'provisional lifetime');

  t.equal(ct.update(e, O, SYN, 60, 0), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_SYN_SENT);
  t.equal(e.seenReply, false);
  t.equal(ct.update(e, R, SYN | ACK, 60, 10), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_SYN_RECV);
  t.equal(e.seenReply, true);
  t.equal(e.assured, false);
  t.equal(ct.update(e, O, ACK, 52, 20), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_ESTABLISHED);
  t.equal(e.assured, true, 'ASSURED on ESTABLISHED after SYN_RECV');
  t.equal(ct.update(e, O, PSH | ACK, 500, 30), CT_UPDATE_OK);
  t.equal(ct.update(e, R, PSH | ACK, 1500, 40), CT_UPDATE_OK);
  t.equal(ct.update(e, R, ACK | ECE | CWR, 52, 45), CT_UPDATE_OK, 'ECN bits do not matter');
  t.equal(e.state, TCP_CT_ESTABLISHED);
  t.equal(e.expires, 45 + 432000 * SEC);

  t.equal(ct.update(e, O, FIN | ACK, 52, 50), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_FIN_WAIT);
  t.equal(ct.update(e, R, ACK, 52, 60), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_CLOSE_WAIT);
  t.equal(ct.update(e, R, FIN | ACK, 52, 70), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_LAST_ACK);
  t.equal(ct.update(e, O, ACK, 52, 80), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_TIME_WAIT);
  t.equal(e.expires, 80 + 120 * SEC);
  t.equal(e.origPackets, 5);
  t.equal(e.origBytes, 60 + 52 + 500 + 52 + 52);
  t.equal(e.replyPackets, 5);
  t.equal(e.replyBytes, 60 + 1500 + 52 + 52 + 52);
  t.equal(e.assured, true);
});

t.test('FIN from the server first', async (t) => {
  const { e, results } = drive([...HANDSHAKE, [R, FIN | ACK], [O, ACK], [O, FIN | ACK], [R, ACK]]);
  t.same(results, [0, 0, 0, 0, 0, 0, 0]);
  t.equal(e.state, TCP_CT_TIME_WAIT);
  const states: string[] = [];
  const ct = new Conntrack({ seed: 4 });
  const f = tcpFlow(ct);
  for (const [dir, flags] of [...HANDSHAKE, [R, FIN | ACK], [O, ACK], [O, FIN | ACK], [R, ACK]] as Step[]) {
    ct.update(f, dir, flags, 60, 0);
    states.push(TCP_STATE_NAMES[f.state]);
  }
  t.same(states, ['SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'CLOSE_WAIT', 'LAST_ACK', 'TIME_WAIT']);
});

t.test('simultaneous close: FIN both ways, then the last ACK', async (t) => {
  const { e } = drive([...HANDSHAKE, [O, FIN | ACK], [R, FIN | ACK], [O, ACK]]);
  t.equal(TCP_STATE_NAMES[e.state], 'TIME_WAIT');
});

t.test('RST on an established flow: CLOSE for 10 s', async (t) => {
  const { ct, e, last, results } = drive([...HANDSHAKE, [R, RST | ACK]]);
  t.equal(results[3], CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_CLOSE);
  t.equal(e.expires, last + 10 * SEC);
  t.equal(e.live, true);
  // anything but a SYN stays CLOSE
  t.equal(ct.update(e, O, ACK, 52, last + 1), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_CLOSE);
});

t.test('RST before any reply (connection refused): the flow is removed at once, like netfilter', async (t) => {
  const ct = new Conntrack({ seed: 5 });
  const e = tcpFlow(ct);
  ct.update(e, O, SYN, 60, 0);
  t.equal(ct.update(e, R, RST | ACK, 40, 5), CT_UPDATE_OK, 'the RST itself passes');
  t.equal(e.live, false);
  t.equal(e.replyPackets, 1, 'and is counted');
  t.equal(ct.size, 0);
  t.equal(find(ct, 6), null);
});

t.test('INVALID packets leave state, timer and counters alone', async (t) => {
  const ct = new Conntrack({ seed: 6 });
  const e = tcpFlow(ct);
  ct.update(e, O, SYN, 60, 0);
  const before = { state: e.state, expires: e.expires, p: e.origPackets, r: e.replyPackets };
  t.equal(ct.update(e, O, ACK, 52, 10), CT_UPDATE_INVALID, 'ACK before the SYN/ACK');
  t.equal(ct.update(e, O, FIN | ACK, 52, 10), CT_UPDATE_INVALID, 'FIN in SYN_SENT');
  t.equal(ct.update(e, O, SYN | ACK, 60, 10), CT_UPDATE_INVALID, 'the client cannot send SYN/ACK');
  t.equal(ct.update(e, O, SYN | FIN, 60, 10), CT_UPDATE_INVALID, 'SYN+FIN');
  t.equal(ct.update(e, O, 0, 40, 10), CT_UPDATE_INVALID, 'no flags');
  t.equal(ct.update(e, O, FIN, 40, 10), CT_UPDATE_INVALID, 'FIN without ACK');
  t.equal(ct.update(e, O, FIN | PSH | 0x20, 40, 10), CT_UPDATE_INVALID, 'XMAS-like');
  t.same({ state: e.state, expires: e.expires, p: e.origPackets, r: e.replyPackets }, before);
  // a first packet that is not a SYN or an ACK cannot create a flow
  const f = drive([[O, FIN | ACK]]);
  t.same(f.results, [CT_UPDATE_INVALID]);
  t.equal(f.e.state, TCP_CT_NONE);
  t.notOk(tcpFlagsValid(SYN | RST));
  t.ok(tcpFlagsValid(RST | ACK));
  t.ok(tcpFlagsValid(FIN | ACK | PSH));
});

t.test('IGNORED packets pass but do not touch the state or timer', async (t) => {
  const { ct, e, last } = drive(HANDSHAKE.slice(0, 2));
  const expires = e.expires;
  t.equal(ct.update(e, R, SYN | ACK, 60, last + 500), CT_UPDATE_IGNORED, 'retransmitted SYN/ACK');
  t.equal(e.state, TCP_CT_SYN_RECV);
  t.equal(e.expires, expires);
  ct.update(e, O, ACK, 52, last + 600);
  t.equal(ct.update(e, O, SYN, 60, last + 700), CT_UPDATE_IGNORED, 'SYN on an established flow');
  t.equal(e.state, TCP_CT_ESTABLISHED);
});

t.test('a SYN on a TIME_WAIT or CLOSE flow reopens it: the old entry goes, REOPEN is returned', async (t) => {
  const tw = drive([...HANDSHAKE, [O, FIN | ACK], [R, ACK], [R, FIN | ACK], [O, ACK]]);
  t.equal(tw.e.state, TCP_CT_TIME_WAIT);
  t.equal(tw.ct.update(tw.e, O, SYN, 60, tw.last + 1), CT_UPDATE_REOPEN);
  t.equal(tw.e.live, false);
  t.equal(find(tw.ct, tw.last + 2), null, 'the next lookup misses: a new flow is set up');
  const cl = drive([...HANDSHAKE, [O, RST]]);
  t.equal(cl.ct.update(cl.e, O, SYN, 60, cl.last + 1), CT_UPDATE_REOPEN);
  t.equal(cl.ct.size, 0);
  // a retransmitted SYN in SYN_SENT is not a reopen
  const ss = drive([[O, SYN]]);
  t.equal(ss.ct.update(ss.e, O, SYN, 60, 5), CT_UPDATE_OK);
  t.equal(ss.e.live, true);
});

t.test('a flow picked up mid-stream: ESTABLISHED, capped at 300 s until both ways are seen', async (t) => {
  const ct = new Conntrack({ seed: 7 });
  const e = tcpFlow(ct);
  t.equal(ct.update(e, O, ACK, 52, 0), CT_UPDATE_OK);
  t.equal(e.state, TCP_CT_ESTABLISHED);
  t.equal(e.assured, false);
  t.equal(e.expires, 300 * SEC, 'nf_conntrack_tcp_timeout_unacknowledged');
  ct.update(e, R, ACK, 52, 10);
  t.equal(e.seenReply, true);
  t.equal(e.assured, false, 'the first reply is not yet a valid answer');
  t.equal(e.expires, 10 + 300 * SEC);
  ct.update(e, O, ACK, 52, 20);
  t.equal(e.assured, true);
  t.equal(e.expires, 20 + 432000 * SEC);
});

t.test('UDP: unreplied 30 s; a reply alone keeps 30 s; traffic after 2 s makes it a stream, ASSURED, 120 s', async (t) => {
  const ct = new Conntrack({ seed: 8 });
  const e = ct.insert(PROTO_UDP, CLIENT, ip('10.32.0.10'), 44560, 53, ip('10.64.1.7'), MASQ, 53, 44560, 0, {
    serviceName: 'kube-system/kube-dns:dns',
    serviceIndex: 2,
    endpointAddr: ip('10.64.1.7'),
    endpointPort: 53,
    masquerade: true,
  })!;
  const lookupQ = (now: number) => ct.lookup(PROTO_UDP, CLIENT, ip('10.32.0.10'), 44560, 53, now);
  ct.update(e, O, 0, 73, 0);
  t.equal(e.expires, 30 * SEC);
  t.equal(e.seenReply, false);
  ct.update(e, R, 0, 140, 100);
  t.equal(e.seenReply, true);
  t.equal(e.assured, false, 'query and answer: not a stream');
  t.equal(e.expires, 100 + 30 * SEC);
  ct.update(e, O, 0, 73, 1500);
  t.equal(e.assured, false, 'within 2 s of the first packet');
  t.equal(e.expires, 1500 + 30 * SEC);
  ct.update(e, O, 0, 73, 2001);
  t.equal(e.assured, true, 'still active after 2 s: ASSURED');
  t.equal(e.expires, 2001 + 120 * SEC);
  t.equal(lookupQ(e.expires - 1), e);
  t.equal(lookupQ(e.expires), null);

  // unreplied: alive 1 ms before 30 s, gone at 30 s
  const ct2 = new Conntrack({ seed: 9 });
  const u = ct2.insert(PROTO_UDP, CLIENT, ip('10.32.0.10'), 1, 53, ip('10.64.1.7'), MASQ, 53, 1, 0, {
    serviceName: 'x',
    serviceIndex: 0,
    endpointAddr: ip('10.64.1.7'),
    endpointPort: 53,
    masquerade: true,
  })!;
  ct2.update(u, O, 0, 60, 1000);
  t.equal(ct2.lookup(PROTO_UDP, ip('10.64.1.7'), MASQ, 53, 1, 30_999), u);
  t.equal(ct2.lookup(PROTO_UDP, ip('10.64.1.7'), MASQ, 53, 1, 31_000), null);
});

t.test('ICMP echo: 30 s, reply seen, never ASSURED', async (t) => {
  const ct = new Conntrack({ seed: 10 });
  const a = ip('10.99.0.1');
  const b = ip('10.99.0.2');
  const e = ct.insert(PROTO_ICMP, a, b, 7, 7, b, a, 7, 7, 0, { serviceName: '', serviceIndex: -1, endpointAddr: b, endpointPort: 0, masquerade: false })!;
  ct.update(e, O, 0, 84, 0);
  ct.update(e, R, 0, 84, 1);
  ct.update(e, O, 0, 84, 5000);
  t.equal(e.seenReply, true);
  t.equal(e.assured, false);
  t.equal(e.expires, 5000 + 30 * SEC);
  t.equal(ct.lookup(PROTO_ICMP, b, a, 7, 7, 34_999), e);
  t.equal(ct.lookup(PROTO_ICMP, b, a, 7, 7, 35_000), null);
});

t.test('SCTP, simple model: COOKIE_WAIT 30 s, ESTABLISHED 5 days once answered, CLOSED 10 s on ABORT', async (t) => {
  const ct = new Conntrack({ seed: 11 });
  const mk = (sport: number) =>
    ct.insert(PROTO_SCTP, CLIENT, VIP, sport, 3868, EP, MASQ, 3868, sport, 0, {
      serviceName: 'default/diameter:sctp',
      serviceIndex: 4,
      endpointAddr: EP,
      endpointPort: 3868,
      masquerade: true,
    })!;
  const INIT = 1;
  const INIT_ACK = 2;
  const DATA = 0;
  const ABORT = 6;
  const SHUTDOWN_COMPLETE = 14;
  const e = mk(5000);
  ct.update(e, O, INIT, 100, 0);
  t.equal(e.state, SCTP_CT_COOKIE_WAIT);
  t.equal(e.expires, 30 * SEC);
  ct.update(e, R, INIT_ACK, 300, 10);
  t.equal(e.state, SCTP_CT_ESTABLISHED);
  t.equal(e.assured, true);
  t.equal(e.expires, 10 + 432000 * SEC);
  ct.update(e, O, DATA, 100, 20);
  t.equal(e.expires, 20 + 432000 * SEC);
  ct.update(e, R, ABORT, 50, 30);
  t.equal(e.state, SCTP_CT_CLOSED);
  t.equal(e.expires, 30 + 10 * SEC);
  ct.update(e, O, DATA, 100, 40);
  t.equal(e.state, SCTP_CT_CLOSED, 'stays closed');
  t.equal(ct.lookup(PROTO_SCTP, CLIENT, VIP, 5000, 3868, 40 + 10 * SEC - 1), e);
  t.equal(ct.lookup(PROTO_SCTP, CLIENT, VIP, 5000, 3868, 40 + 10 * SEC), null);

  const f = mk(5001);
  ct.update(f, O, INIT, 100, 0);
  t.equal(ct.lookup(PROTO_SCTP, CLIENT, VIP, 5001, 3868, 30 * SEC - 1), f, 'unreplied: alive before 30 s');
  ct.update(f, R, SHUTDOWN_COMPLETE, 16, 1000);
  t.equal(f.state, SCTP_CT_CLOSED);
});

t.test('updating a flow that is no longer in the table leaves the table alone', async (t) => {
  const ct = new Conntrack({ seed: 12 });
  const e = tcpFlow(ct);
  const other = ct.insert(PROTO_TCP, CLIENT, VIP, 40001, 443, EP, MASQ, 6443, 40001, 0, {
    serviceName: 'default/kubernetes:https',
    serviceIndex: 0,
    endpointAddr: EP,
    endpointPort: 6443,
    masquerade: true,
  })!;
  ct.update(e, O, SYN, 60, 0);
  t.ok(ct.delete(e));
  // a packet of the deleted flow still in flight: RST before any reply would remove it again
  t.equal(ct.update(e, R, RST | ACK, 40, 1), CT_UPDATE_OK);
  t.equal(ct.size, 1);
  t.equal(ct.lookup(PROTO_TCP, CLIENT, VIP, 40001, 443, 2), other);
  t.equal(ct.lookup(PROTO_TCP, EP, MASQ, 6443, 40001, 2), other);
});
