/**
 * The hot modules (dataplane/pipeline.ts, dataplane/wire/rewrite.ts) keep
 * module-local copies of the wire's named offsets, flags and protocol numbers
 * (an imported binding costs a check per use on the packet path): every copy
 * must equal its definition in the wire modules.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import * as ipv4 from '../../dataplane/wire/ipv4.ts';
import * as tcp from '../../dataplane/wire/tcp.ts';
import * as udp from '../../dataplane/wire/udp.ts';
import * as sctp from '../../dataplane/wire/sctp.ts';
import * as icmp from '../../dataplane/wire/icmp.ts';
import * as addr from '../../dataplane/addr.ts';

const defined: Record<string, unknown> = { ...ipv4, ...tcp, ...udp, ...sctp, ...icmp, ...addr };

for (const file of ['../../dataplane/pipeline.ts', '../../dataplane/wire/rewrite.ts']) {
  t.test(`${file.slice(6)}: its copies of the wire's names equal the definitions`, async (t) => {
    const text = readFileSync(new URL(file, import.meta.url), 'utf8');
    const copies = [...text.matchAll(/^const ((?:IPV4|IP|TCP|UDP|SCTP|ICMP|PROTO)_[A-Z0-9_]+) = (0x[0-9a-f]+|\d+);$/gm)];
    t.ok(copies.length >= 10, `${copies.length} copies found`);
    for (const [, name, value] of copies) {
      t.ok(name in defined, `${name} is a name of the wire modules`);
      t.equal(Number(value), defined[name], `${name} = ${value}`);
    }
  });
}
