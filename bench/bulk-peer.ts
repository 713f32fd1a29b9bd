/**
 * Both ends of a bulk TCP transfer whose integrity is checked: each side
 * sends random bytes and keeps the SHA-256 of what it sent and of what it
 * received; the two sides' digests must match crosswise.
 *
 *   node --import tsx bench/bulk-peer.ts serve --port P --bytes N [--seconds S]
 *       accept one connection; send N bytes (or for S seconds) while receiving; print one JSON line
 *   node --import tsx bench/bulk-peer.ts send --to HOST:PORT --bytes N [--seconds S]
 *       connect and do the same
 *
 * The JSON line: {"sent": n, "sentSha256": hex, "received": n, "receivedSha256": hex, "seconds": s}.
 * "ready" is printed (serve) once listening.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { createServer, connect } from 'node:net';
import type { Socket } from 'node:net';

function arg(name: string, def?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) {
    if (def === undefined) throw new Error(`bulk-peer: --${name} is required`);
    return def;
  }
  return process.argv[i + 1];
}

const mode = process.argv[2];
const bytes = Number(arg('bytes', '0'));
const seconds = Number(arg('seconds', '0'));
const CHUNK = 256 * 1024;
// each side ends its sending half when done and keeps reading until the other side's end (allowHalfOpen)

function run(sock: Socket): void {
  const t0 = performance.now();
  const txHash = createHash('sha256');
  const rxHash = createHash('sha256');
  let sent = 0;
  let received = 0;
  let sendDone = false;
  let recvDone = false;
  const finish = (): void => {
    if (!sendDone || !recvDone) return;
    sock.destroy();
    // stdout is a pipe (asynchronous): exit once the line is out
    process.stdout.write(JSON.stringify({
      sent, sentSha256: txHash.digest('hex'), received, receivedSha256: rxHash.digest('hex'), seconds: (performance.now() - t0) / 1000,
    }) + '\n', () => process.exit(0));
  };
  sock.on('data', (d: Buffer) => {
    received += d.length;
    rxHash.update(d);
  });
  sock.on('end', () => {
    recvDone = true;
    finish();
  });
  sock.on('error', (e) => {
    process.stderr.write(`bulk-peer: ${e.message}\n`);
    process.exit(1);
  });
  const more = (): boolean => (seconds > 0 ? performance.now() - t0 < seconds * 1000 : sent < bytes);
  const pump = (): void => {
    while (more()) {
      const n = seconds > 0 ? CHUNK : Math.min(CHUNK, bytes - sent);
      const b = randomFillSync(Buffer.allocUnsafe(n));
      txHash.update(b);
      sent += n;
      if (!sock.write(b)) {
        sock.once('drain', pump);
        return;
      }
    }
    sock.end(() => {
      sendDone = true;
      finish();
    });
  };
  pump();
}

if (mode === 'serve') {
  const srv = createServer({ allowHalfOpen: true }, (s) => {
    srv.close();
    run(s);
  });
  srv.listen(Number(arg('port')), '0.0.0.0', () => process.stdout.write('ready\n'));
} else if (mode === 'send') {
  const [host, port] = arg('to').split(':');
  const s = connect({ host, port: Number(port), allowHalfOpen: true }, () => run(s));
  s.on('error', (e) => {
    process.stderr.write(`bulk-peer: ${e.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write('usage: bulk-peer.ts serve --port P --bytes N | send --to HOST:PORT --bytes N [--seconds S]\n');
  process.exit(2);
}
