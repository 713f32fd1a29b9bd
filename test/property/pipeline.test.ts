import t from 'tap';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { Pipeline, V_FORWARD } from '../../dataplane/pipeline.ts';
import { Conntrack } from '../../dataplane/conntrack.ts';
import { Rng } from '../../dataplane/select.ts';
import { compile } from '../../control/compile.ts';
import { parseRuleSet } from '../../control/validate.ts';
import { parseIPv4 } from '../../dataplane/addr.ts';
import { packetSpec, buildPacket } from './wire-gen.ts';
import { checksumsValid } from '../support/packets.ts';
import { get16, get32 } from '../../dataplane/wire/bytes.ts';

const rs = parseRuleSet(JSON.parse(readFileSync(new URL('../../examples/demo-ruleset.json', import.meta.url), 'utf8')));
const tables = compile(rs);
const targets: Array<[number, number, number]> = [
  [17, parseIPv4('10.32.0.10'), 53],
  [6, parseIPv4('10.32.0.10'), 53],
  [6, parseIPv4('10.32.0.10'), 9153],
  [6, parseIPv4('10.32.0.159'), 8080],
  [6, parseIPv4('172.16.1.35'), 30080],
  [6, parseIPv4('10.32.0.200'), 80],
];
const counted = (pl: Pipeline) => pl.counters.packets.reduce((a, b) => a + b, 0);

/** Valid packets aimed at the demo's services, from anywhere. */
const toService = fc.tuple(packetSpec, fc.constantFrom(...targets)).map(([s, [proto, dst, dport]]) => {
  const spec = { ...s, proto, dst, dport };
  return buildPacket(spec)[0].subarray(0, buildPacket(spec)[1]);
});

t.test('fuzz: random and mutated bytes never throw, and every input ends in exactly one counted verdict', async (t) => {
  const pl = new Pipeline({ conntrack: new Conntrack({ maxEntries: 5000 }), rng: new Rng(9) });
  const mutated = fc.tuple(toService, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat(80)).map(([p, muts, cut]) => {
    const b = new Uint8Array(p);
    for (const [i, v] of muts) b[i % b.length] = v;
    return cut > 70 ? b.subarray(0, cut % (b.length + 1)) : b;
  });
  const input = fc.oneof(fc.uint8Array({ maxLength: 160 }), mutated, mutated);
  let runs = 0;
  fc.assert(
    fc.property(input, fc.integer({ min: 0, max: 64 }), (bytes, off) => {
      // at an offset inside a larger buffer, with junk around it, as in the loop's slots
      const buf = new Uint8Array(off + bytes.length + 16).fill(0xee);
      buf.set(bytes, off);
      const before = counted(pl);
      pl.process(buf, off, bytes.length, tables, runs++);
      if (counted(pl) !== before + 1) return false;
      // nothing outside the packet was written
      for (let i = 0; i < off; i++) if (buf[i] !== 0xee) return false;
      for (let i = off + bytes.length; i < buf.length; i++) if (buf[i] !== 0xee) return false;
      return true;
    }),
    { numRuns: 100_000, seed: 20261122 },
  );
  const s = pl.counters.snapshot();
  t.equal(runs, 100_000);
  t.comment(`fuzzed ${runs} inputs: ${JSON.stringify(s.packets)}, drops ${JSON.stringify(s.drops)}, malformed ${JSON.stringify(s.malformed)}`);
  t.ok(s.drops.malformed > 1000, 'the fuzzer reached the malformed paths');
  t.ok(s.packets.forward > 1000 && s.packets.reply > 100, 'and the translation and reject paths');
});

t.test('after every rewrite, all checksums equal a full recomputation (requests and replies)', async (t) => {
  const pl = new Pipeline({ rng: new Rng(3) });
  let n = 0;
  fc.assert(
    fc.property(toService, (p) => {
      const hl0 = (p[0] & 15) * 4;
      const client = get32(p, 12);
      const clientPort = get16(p, hl0);
      const service = get32(p, 16);
      const servicePort = get16(p, hl0 + 2);
      const v = pl.process(p, 0, p.length, tables, n++);
      if (v !== V_FORWARD) return true; // rejects are covered by the unit tests
      if (!checksumsValid(p)) return false;
      // the endpoint answers: swap the translated packet's addresses and ports, refill checksums via the builder
      const hl = (p[0] & 15) * 4;
      const proto = p[9];
      const spec = {
        proto, src: get32(p, 16), dst: get32(p, 12), sport: get16(p, hl + 2), dport: get16(p, hl),
        ttl: 64, tos: 0, ident: 1, df: true, ipOptions: new Uint8Array(0), l4Options: new Uint8Array(0),
        payload: new Uint8Array([1, 2, 3]), udpNoChecksum: false, icmpType: 8, seq: 5,
      };
      const [rb, rl] = buildPacket(spec);
      const r = rb.subarray(0, rl);
      if (pl.process(r, 0, r.length, tables, n++) !== V_FORWARD) return false;
      // the reply reaches the client from the address and port it asked for
      const rhl = (r[0] & 15) * 4;
      return checksumsValid(r) && get32(r, 16) === client && get16(r, rhl + 2) === clientPort && get32(r, 12) === service && get16(r, rhl) === servicePort;
    }),
    { numRuns: 3000, seed: 7 },
  );
  t.ok(pl.counters.snapshot().events.replies > 1000, 'replies were translated');
});
