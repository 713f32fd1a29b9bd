/**
 * An outside oracle: tcpdump verifies IPv4 header, TCP, UDP and ICMP
 * checksums when it prints with -vvv. Random packets are translated with the
 * incremental rewrites (and ICMP errors about them have their quotes
 * translated), written to a pcap file (LINKTYPE_RAW), and tcpdump must find
 * every checksum correct.
 */
import t from 'tap';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packetSpec, buildPacket } from './wire-gen.ts';
import { rewriteSrc, rewriteDst, icmpQuoteRewriteSrc, icmpQuoteRewriteDst } from '../../dataplane/wire/rewrite.ts';
import { buildIcmpError } from '../../dataplane/wire/icmp.ts';

const haveTcpdump = spawnSync('tcpdump', ['--version']).status === 0;

function pcap(packets: Uint8Array[]): Buffer {
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0);
  head.writeUInt16LE(2, 4);
  head.writeUInt16LE(4, 6);
  head.writeUInt32LE(65535, 16);
  head.writeUInt32LE(101, 20); // LINKTYPE_RAW: packets start with the IPv4 header
  const parts = [head];
  for (const p of packets) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(p.length, 8);
    h.writeUInt32LE(p.length, 12);
    parts.push(h, Buffer.from(p));
  }
  return Buffer.concat(parts);
}

// unicast addresses and unprivileged ports, so that tcpdump prints plain TCP/UDP lines
const addr = fc.integer({ min: 0x0a000000, max: 0x0affffff });
const port = fc.integer({ min: 30000, max: 30999 });
const spec = packetSpec.filter((s) => s.proto !== 132).map((s) => ({ ...s, sport: s.sport % 1000 + 30000, dport: s.dport % 1000 + 31000, src: (s.src & 0xffffff) | 0x0a000000, dst: (s.dst & 0xffffff) | 0x0a000000 }));
const scenario = fc.record({ s: spec, newSrc: addr, newDst: addr, sport: port, dport: port, asError: fc.boolean() });

t.test('tcpdump -vvv finds every rewritten checksum correct', { skip: haveTcpdump ? false : 'tcpdump is not installed (it is the outside checksum oracle)' }, async (t) => {
  const cases = fc.sample(scenario, { numRuns: 300, seed: 20240611 });
  const packets: Uint8Array[] = [];
  let tcp = 0, udpWithSum = 0;
  for (const c of cases) {
    const [p] = buildPacket(c.s, 0);
    rewriteDst(p, 0, c.newDst, c.dport);
    rewriteSrc(p, 0, c.newSrc, c.sport);
    if (c.asError) {
      // an error about the original packet, translated the way the NAT translates it
      const [orig] = buildPacket(c.s, 0);
      const e = new Uint8Array(120);
      const n = buildIcmpError(e, 0, orig, 0, orig.length, 3, 3, c.newDst);
      icmpQuoteRewriteSrc(e, 0, c.newSrc, c.sport);
      icmpQuoteRewriteDst(e, 0, c.newDst, c.dport);
      rewriteDst(e, 0, c.newSrc, -1);
      packets.push(e.subarray(0, n));
      // a UDP datagram without payload is quoted whole, and tcpdump checks the quoted checksum too
      if (c.s.proto === 17 && !c.s.udpNoChecksum && c.s.payload.length === 0) udpWithSum++;
    } else {
      packets.push(p);
      if (c.s.proto === 6) tcp++;
      else if (c.s.proto === 17 && !c.s.udpNoChecksum) udpWithSum++;
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'tp-wire-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'rewritten.pcap');
  writeFileSync(file, pcap(packets));
  const r = spawnSync('tcpdump', ['-nn', '-vvv', '-r', file], { encoding: 'utf8', timeout: 20000 });
  t.equal(r.status, 0, `tcpdump exit: ${r.stderr}`);
  const out = r.stdout;
  const bad = out.split('\n').filter((l) => /bad cksum|wrong icmp cksum|incorrect|bad udp cksum/.test(l));
  t.same(bad, [], 'no checksum tcpdump calls wrong');
  t.equal((out.match(/\(correct\)/g) ?? []).length, tcp, 'every TCP checksum checked and correct');
  t.equal((out.match(/udp sum ok/g) ?? []).length, udpWithSum, 'every UDP checksum checked and ok');
  t.equal((out.match(/^\d\d:\d\d:\d\d\.\d+ IP /gm) ?? []).length, packets.length, 'every packet printed');
});
