/**
 * The real server of one lab pod: run inside the pod's namespace,
 *   ip netns exec NS node --import tsx scripts/pod-server.ts --address 10.64.1.13 \
 *      --listen tcp:80 --listen udp:53:dns --listen udp:5000:echo
 * Each answer names the endpoint that gave it and the source address the pod
 * saw, so a client can tell which endpoint it reached and whether it was
 * masqueraded:
 *   tcp:PORT        HTTP: {"endpoint":"10.64.1.13:80","client":"192.168.77.2:41234","method":"GET","path":"/"}
 *   udp:PORT:echo   one datagram back: that JSON on one line, "\n", then the payload received
 *   udp:PORT:raw    the payload back unchanged (for load generators)
 *   udp:PORT:dns    a minimal valid DNS response: A queries get the endpoint's own address,
 *                   TXT queries "endpoint=A:P client=C:Q", others no answer; malformed queries FORMERR
 * --keep-alive-timeout MS: how long the HTTP servers keep an idle keep-alive connection
 * (Node's default, 5 s, when not given).
 * Prints "ready" when every socket listens; SIGTERM/SIGINT close them and exit 0.
 */
import dgram from 'node:dgram';
import http from 'node:http';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseIPv4 } from '../dataplane/addr.ts';
import { parseIPv6, hostPort } from '../dataplane/addr6.ts';

export type PodListenKind = 'http' | 'echo' | 'raw' | 'dns';

export interface PodListen {
  protocol: 'TCP' | 'UDP';
  port: number;
  kind: PodListenKind;
}

/** Parse "tcp:80", "udp:53:dns", "udp:5000" (echo), "udp:7:raw". */
export function parseListen(spec: string): PodListen {
  const m = /^(tcp|udp):(\d{1,5})(?::(echo|raw|dns|http))?$/i.exec(spec);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535)
    throw new Error(`--listen ${spec}: expected tcp:PORT or udp:PORT[:echo|raw|dns] with PORT in 1..65535`);
  const protocol = m[1].toUpperCase() as 'TCP' | 'UDP';
  const kind = (m[3]?.toLowerCase() ?? (protocol === 'TCP' ? 'http' : 'echo')) as PodListenKind;
  if ((protocol === 'TCP') !== (kind === 'http')) throw new Error(`--listen ${spec}: TCP ports serve http, UDP ports echo, raw or dns`);
  return { protocol, port, kind };
}

export function formatListen(l: PodListen): string {
  return l.protocol === 'TCP' ? `tcp:${l.port}` : `udp:${l.port}:${l.kind}`;
}

const DNS_HEADER = 12;

/**
 * Answer one DNS query (a minimal valid response) from endpoint `address`, or null when the
 * message is too short to carry a header. Exported for unit use.
 */
export function dnsAnswer(query: Uint8Array, address: string, endpoint: string, client: string): Uint8Array | null {
  if (query.length < DNS_HEADER) return null;
  const q = Buffer.from(query.buffer, query.byteOffset, query.length);
  const flagsIn = q.readUInt16BE(2);
  const header = (rcode: number, qd: number, an: number): Buffer => {
    const h = Buffer.alloc(DNS_HEADER);
    h.writeUInt16BE(q.readUInt16BE(0), 0); // same id
    h.writeUInt16BE(0x8000 | (flagsIn & 0x7900) | 0x0080 | rcode, 2); // QR, opcode and RD copied, RA
    h.writeUInt16BE(qd, 4);
    h.writeUInt16BE(an, 6);
    return h;
  };
  // the first question: labels up to a zero byte (no compression in a query), QTYPE, QCLASS
  let p = DNS_HEADER;
  while (p < q.length && q[p] !== 0 && q[p] < 64) p += q[p] + 1;
  if (q.readUInt16BE(4) < 1 || (flagsIn & 0x8000) !== 0 || p >= q.length || q[p] !== 0 || p + 5 > q.length)
    return header(1, 0, 0); // FORMERR
  const question = q.subarray(DNS_HEADER, p + 5);
  const qtype = q.readUInt16BE(p + 1);
  const qclass = q.readUInt16BE(p + 3);
  let rdata: Buffer | null = null;
  let type = qtype;
  const a = parseIPv4(address);
  const a6 = a < 0 ? parseIPv6(address) : null;
  if (qclass === 1 && a >= 0 && (qtype === 1 || qtype === 255)) {
    rdata = Buffer.from([a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255]);
    type = 1;
  } else if (qclass === 1 && a6 !== null && (qtype === 28 || qtype === 255)) {
    // an IPv6 pod answers AAAA with its own address
    rdata = Buffer.alloc(16);
    for (let i = 0; i < 4; i++) rdata.writeUInt32BE(a6[i], 4 * i);
    type = 28;
  } else if (qclass === 1 && qtype === 16) {
    const text = Buffer.from(`endpoint=${endpoint} client=${client}`);
    rdata = Buffer.concat([Buffer.from([text.length]), text]);
  }
  if (!rdata) return Buffer.concat([header(0, 1, 0), question]);
  const rr = Buffer.alloc(12);
  rr.writeUInt16BE(0xc00c, 0); // name: pointer to the question's name
  rr.writeUInt16BE(type, 2);
  rr.writeUInt16BE(1, 4); // IN
  rr.writeUInt32BE(0, 6); // TTL 0: every query reaches a server
  rr.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([header(0, 1, 1), question, rr, rdata]);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { address: { type: 'string' }, listen: { type: 'string', multiple: true }, 'keep-alive-timeout': { type: 'string' } },
  });
  // HTTP keep-alive: how long an idle connection is kept (Node's default 5 s when not given)
  const keepAliveMs = values['keep-alive-timeout'] === undefined ? null : Number(values['keep-alive-timeout']);
  if (keepAliveMs !== null && !(Number.isInteger(keepAliveMs) && keepAliveMs > 0)) throw new Error(`--keep-alive-timeout must be milliseconds > 0, got "${values['keep-alive-timeout']}"`);
  const address = values.address ?? '';
  if (parseIPv4(address) < 0 && parseIPv6(address) === null) throw new Error(`--address must be the pod's IPv4 or IPv6 address, got "${address}"`);
  const listens = (values.listen ?? []).map(parseListen);
  if (listens.length === 0) throw new Error('give at least one --listen tcp:PORT or udp:PORT[:echo|raw|dns]');

  const closers: (() => void)[] = [];
  await Promise.all(
    listens.map(
      (l) =>
        new Promise<void>((resolve, reject) => {
          const endpoint = hostPort(address, l.port);
          if (l.protocol === 'TCP') {
            const server = http.createServer((req, res) => {
              const body = JSON.stringify({
                endpoint,
                client: hostPort(req.socket.remoteAddress ?? '', req.socket.remotePort ?? 0),
                method: req.method,
                path: req.url,
              });
              res.writeHead(200, { 'content-type': 'application/json', 'x-endpoint': endpoint });
              res.end(body + '\n');
            });
            if (keepAliveMs !== null) server.keepAliveTimeout = keepAliveMs;
            server.once('error', reject);
            server.listen(l.port, address, () => resolve());
            closers.push(() => {
              server.closeAllConnections();
              server.close();
            });
          } else {
            const sock = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
            sock.on('message', (msg, rinfo) => {
              const client = hostPort(rinfo.address, rinfo.port);
              let out: Uint8Array | null;
              if (l.kind === 'dns') out = dnsAnswer(msg, address, endpoint, client);
              else if (l.kind === 'raw') out = msg;
              else out = Buffer.concat([Buffer.from(JSON.stringify({ endpoint, client }) + '\n'), msg]);
              if (out) sock.send(out, rinfo.port, rinfo.address);
            });
            sock.once('error', reject);
            sock.bind(l.port, address, () => resolve());
            closers.push(() => sock.close());
          }
        }),
    ),
  );
  const stop = (): void => {
    for (const c of closers) c();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdout.write(`ready ${address} ${listens.map(formatListen).join(' ')}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`pod-server: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
