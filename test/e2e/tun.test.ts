/**
 * The TUN addon against the real kernel, inside a namespace of its own:
 * packets sent by a program in the namespace come out of readBatch literally,
 * replies built here go in through writeBatch and reach that program.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  TunAgent,
  buildIcmpEcho,
  buildUdp,
  hex,
  ip,
  netnsSkipReason,
  nsRun,
  parsePacket,
  probe,
  testPrefix,
  unhex,
  withNetns,
} from './helpers.ts';

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `TUN end-to-end tests skipped: ${skip}`);
} else {
  const addonPath = fileURLToPath(new URL('../../build/Release/tun.node', import.meta.url));
  t.ok(existsSync(addonPath), `the TUN addon is built at ${addonPath} (run npm install / npx node-gyp rebuild)`);

  const ns = testPrefix('tun');
  withNetns(t, [ns]);
  const TUN = 'tpt0';
  // the namespace's side: 10.99.0.1/24 on the TUN; 10.99.0.2 is "beyond" it (the agent answers for it)
  const LOCAL = '10.99.0.1';
  const PEER = '10.99.0.2';

  const agent = await TunAgent.start(ns);
  t.teardown(() => agent.stop());
  const opened = await agent.call('open', { name: TUN });
  t.equal(opened.name, TUN, 'open returns the interface name');
  t.ok(opened.fd > 2, 'open returns a file descriptor');
  t.equal(opened.vnetHeaderSize, 0, 'no virtio_net_hdr unless asked');
  ip(['-n', ns, 'addr', 'add', `${LOCAL}/24`, 'dev', TUN]);
  ip(['-n', ns, 'link', 'set', TUN, 'up']);

  t.test('a UDP datagram comes out of readBatch literally, and the reply written back reaches the sender', async (t) => {
    const client = probe(ns, ['udp', '--to', `${PEER}:7777`, '--data', 'hello', '--sport', '40001', '--wait', '3000']);
    const got = await agent.call('read', { min: 1 });
    t.equal(got.packets.length, 1, 'one packet read');
    const raw = unhex(got.packets[0]);
    const p = parsePacket(raw);
    t.equal(p.version, 4);
    t.equal(p.ihl, 20);
    t.equal(p.protocol, 17, 'UDP');
    t.equal(p.src, LOCAL);
    t.equal(p.dst, PEER);
    t.equal(p.srcPort, 40001);
    t.equal(p.dstPort, 7777);
    t.equal(p.totalLength, raw.length, 'the length stored is the whole IP packet, no header before it');
    t.ok(p.ipChecksumOk, 'IP header checksum valid');
    t.ok(p.l4ChecksumOk, 'UDP checksum valid');
    t.equal(Buffer.from(p.payload).toString(), 'hello');

    const reply = buildUdp({ src: PEER, dst: LOCAL, srcPort: 7777, dstPort: 40001, payload: 'world' });
    t.same(await agent.call('write', { packets: [hex(reply)] }), { consumed: 1 });
    const r = await client;
    t.same(r.replies, [{ from: `${PEER}:7777`, text: 'world' }], 'the sender received the reply written into the TUN');
  });

  t.test('ICMP: an echo request written into the TUN is answered by the kernel through readBatch', async (t) => {
    const payload = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
    const req = buildIcmpEcho({ src: PEER, dst: LOCAL, id: 0x1234, seq: 7, payload });
    t.same(await agent.call('write', { packets: [hex(req)] }), { consumed: 1 });
    const got = await agent.call('read', { min: 1 });
    t.equal(got.packets.length, 1);
    const p = parsePacket(unhex(got.packets[0]));
    t.equal(p.protocol, 1, 'ICMP');
    t.equal(p.srcPort, 0, 'type 0: echo reply');
    t.equal(p.dstPort, 0, 'code 0');
    t.equal(p.src, LOCAL);
    t.equal(p.dst, PEER);
    t.equal(p.icmpId, 0x1234);
    t.equal(p.icmpSeq, 7);
    t.same([...p.payload], [...payload]);
    t.ok(p.ipChecksumOk && p.l4ChecksumOk, 'checksums valid');
  });

  t.test('one readBatch call returns several packets; writeBatch writes several', async (t) => {
    const sent = await probe(ns, ['udp', '--to', `${PEER}:7000`, '--count', '6', '--expect', '0', '--sport', '40002']);
    t.equal(sent.sent, 6);
    const got = await agent.call('readOnce', { max: 16 });
    t.equal(got.count, 6, 'six datagrams in one batch');
    const parsed = got.packets.map((h: string) => parsePacket(unhex(h)));
    t.ok(parsed.every((p: any) => p.dstPort === 7000 && p.srcPort === 40002), 'all six are the datagrams sent');
    t.equal((await agent.call('readOnce', { max: 16 })).count, 0, 'an empty queue reads as 0, without blocking');

    const client = probe(ns, ['udp', '--to', `${PEER}:7001`, '--data', 'q', '--sport', '40003', '--expect', '3', '--wait', '3000']);
    const q = await agent.call('read', { min: 1 });
    const p = parseFirst(q.packets);
    const replies = ['a', 'b', 'c'].map((s) => hex(buildUdp({ src: PEER, dst: LOCAL, srcPort: 7001, dstPort: p.srcPort, payload: s })));
    t.same(await agent.call('write', { packets: replies }), { consumed: 3 });
    t.same(
      (await client).replies.map((r: any) => r.text),
      ['a', 'b', 'c'],
      'three replies from one writeBatch, in order',
    );
  });

  t.test('a packet larger than its slot is dropped and counted, never handed over truncated', async (t) => {
    const before = await agent.call('stats');
    await probe(ns, ['udp', '--to', `${PEER}:7002`, '--size', '600', '--expect', '0']);
    await probe(ns, ['udp', '--to', `${PEER}:7002`, '--size', '20', '--expect', '0']);
    const got = await agent.call('readOnce', { max: 8, slotSize: 256 });
    t.equal(got.count, 1, 'only the packet that fits');
    t.equal(parsePacket(unhex(got.packets[0])).totalLength, 48);
    const after = await agent.call('stats');
    t.equal(after.rxTruncated - before.rxTruncated, 1, 'rxTruncated counts the 628-byte packet');
    t.equal(after.rxPackets - before.rxPackets, 1);
  });

  t.test('packets the kernel refuses are counted per errno, the batch goes on', async (t) => {
    const before = await agent.call('stats');
    const good = buildUdp({ src: PEER, dst: LOCAL, srcPort: 9, dstPort: 9, payload: 'x' });
    const notIP = new Uint8Array([0x70, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 1]); // version 7
    const r = await agent.call('write', { packets: [hex(good), hex(notIP), hex(good)] });
    t.equal(r.consumed, 3, 'all three consumed');
    const after = await agent.call('stats');
    t.equal(after.txPackets - before.txPackets, 2, 'two written');
    t.equal(after.txErrors - before.txErrors, 1, 'one refused');
    t.equal((after.txErrno.EINVAL ?? 0) - (before.txErrno.EINVAL ?? 0), 1, 'refused with EINVAL');
    // the two good ones reached the kernel: nothing listens on port 9, so it answers port unreachable
    const back = await agent.call('read', { min: 2 });
    const icmp = back.packets.map((h: string) => parsePacket(unhex(h)));
    t.same(
      icmp.map((p: any) => [p.protocol, p.srcPort, p.dstPort, p.dst]),
      [[1, 3, 3, PEER], [1, 3, 3, PEER]],
      'two ICMP port unreachable answers to the written datagrams',
    );
  });

  t.test('the poll callback fires when a packet arrives, and the loop idles otherwise', async (t) => {
    const idle = await agent.call('waitReadable', { timeoutMs: 400 });
    t.equal(idle.fired, false, 'no callback without packets');
    t.ok(idle.cpuMs < 100, `the event loop does not spin while waiting (${idle.cpuMs} ms CPU in ${idle.waitedMs} ms)`);
    const waiting = agent.call('waitReadable', { timeoutMs: 3000 });
    await probe(ns, ['udp', '--to', `${PEER}:7003`, '--expect', '0']);
    const w = await waiting;
    t.equal(w.fired, true, 'callback fired');
    t.equal((await agent.call('readOnce', {})).count, 1, 'the packet is there to read');
  });

  t.test('with vnetHdr every packet carries a virtio_net_hdr before the IP header', async (t) => {
    const v = await agent.call('open', { name: 'tpv0', vnetHdr: true });
    t.equal(v.vnetHeaderSize, 10);
    ip(['-n', ns, 'addr', 'add', '10.98.0.1/24', 'dev', 'tpv0']);
    ip(['-n', ns, 'link', 'set', 'tpv0', 'up']);
    const client = probe(ns, ['udp', '--to', '10.98.0.2:7777', '--data', 'vnet', '--sport', '40009', '--wait', '3000']);
    const got = await agent.call('read', { name: 'tpv0', min: 1 });
    const raw = unhex(got.packets[0]);
    t.equal(raw[1], 0, 'gso_type NONE (no offloads asked)');
    const p = parsePacket(raw.subarray(10));
    t.equal(raw.length, 10 + p.totalLength, 'length = header + IP packet');
    t.same([p.src, p.dst, p.dstPort], ['10.98.0.1', '10.98.0.2', 7777]);
    t.ok(p.ipChecksumOk && p.l4ChecksumOk, 'checksums complete without TUN_F_CSUM');
    const reply = buildUdp({ src: '10.98.0.2', dst: '10.98.0.1', srcPort: 7777, dstPort: 40009, payload: 'ok' });
    const withHeader = new Uint8Array(10 + reply.length);
    withHeader.set(reply, 10); // an all-zero virtio_net_hdr: no offload
    t.same(await agent.call('write', { name: 'tpv0', packets: [hex(withHeader)] }), { consumed: 1 });
    t.same((await client).replies, [{ from: '10.98.0.2:7777', text: 'ok' }], 'the reply with a header reached the sender');
    t.same(await agent.call('offload', { name: 'tpv0', flags: ['CSUM', 'TSO4'] }), { flags: 3 }, 'offloads can be switched on');
    await agent.call('close', { name: 'tpv0' });
  });

  t.test('errors say what happened and what to do', async (t) => {
    const busy = await agent.request('open', { name: TUN, key: 'second' });
    t.equal(busy.ok, false);
    t.equal(busy.error!.code, 'EBUSY');
    t.equal(busy.error!.errno, 16);
    t.match(busy.error!.message, /attaching to TUN device "tpt0" failed: EBUSY — the device is already attached to another file descriptor/);
    t.match(busy.error!.message, /multi_queue/);

    const long = await agent.request('open', { name: 'tp-name-that-is-too-long' });
    t.equal(long.error!.code, 'ENAMETOOLONG');
    t.match(long.error!.message, /at most 15 bytes — choose a shorter name/);

    ip(['-n', ns, 'tuntap', 'add', 'dev', 'tpmq0', 'mode', 'tun', 'multi_queue']);
    const mismatch = await agent.request('open', { name: 'tpmq0', key: 'mq-single' });
    t.equal(mismatch.error!.code, 'EINVAL');
    t.match(mismatch.error!.message, /multi_queue on one side only/);
    const q0 = await agent.call('open', { name: 'tpmq0', key: 'mq0', multiQueue: true });
    const q1 = await agent.call('open', { name: 'tpmq0', key: 'mq1', multiQueue: true });
    t.equal(q0.name, 'tpmq0');
    t.not(q0.fd, q1.fd, 'two queues of one multi-queue device');
    await agent.call('close', { name: 'mq0' });
    await agent.call('close', { name: 'mq1' });

    // without access to /dev/net/tun (an unprivileged user)
    const addon = fileURLToPath(new URL('../../build/Release/tun.node', import.meta.url));
    const r = nsRun(
      ns,
      ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e',
        `try { require(${JSON.stringify(addon)}).open('tpx', 0) } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }`],
      { allowFail: true },
    );
    if (/EACCES|EPERM/.test(r)) {
      const e = JSON.parse(r);
      t.match(e.message, /opening \/dev\/net\/tun failed: (EACCES|EPERM) — permission denied: run as root/);
    } else t.comment(`unprivileged open not checked: ${r.trim() || 'setpriv unavailable'}`);
  });

  t.test('close is idempotent; a closed device refuses I/O with a clear error', async (t) => {
    const first = await agent.call('close', { name: TUN });
    t.equal(first.closed, true);
    const second = await agent.call('close', { name: TUN });
    t.equal(second.fd, -1, 'second close is a no-op');
    const r = await agent.request('readOnce', { name: TUN });
    t.match(r.error!.message, /TUN device tpt0 is closed/);
    t.notMatch(ip(['-n', ns, 'link', 'show']), /tpt0/, 'the transient device went away with its fd');
  });
}

function parseFirst(packets: string[]): ReturnType<typeof parsePacket> {
  if (!packets.length) throw new Error('no packet read');
  return parsePacket(unhex(packets[0]));
}
