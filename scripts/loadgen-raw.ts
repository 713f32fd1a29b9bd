/**
 * The `raw-socket` addon (npm raw-socket, N-API-less NAN addon, built by its
 * install script) seen through a small typed surface. The load generator
 * calls the native wrap directly: `send` is one synchronous sendto(2) and
 * `recv` one recvfrom(2) on a non-blocking socket, so a readable event can be
 * drained in a loop instead of one packet per event-loop turn (what the
 * package's own Socket wrapper does).
 */
import { createRequire } from 'node:module';

interface NativeWrap {
  send(buf: Buffer, offset: number, length: number, address: string, cb: (bytes: number) => void): void;
  recv(buf: Buffer, cb: (buf: Buffer, bytes: number, source: string) => void): void;
  on(event: 'recvReady' | 'sendReady' | 'error' | 'close', fn: (...a: unknown[]) => void): void;
  removeAllListeners(event: string): void;
  close(): void;
}

interface RawSocket {
  wrap: NativeWrap;
  setOption(level: number, option: number, value: number): void;
  close(): void;
}

interface RawSocketModule {
  createSocket(o: { protocol: number; bufferSize?: number; addressFamily?: number }): RawSocket;
  AddressFamily: { IPv4: number; IPv6: number };
  Protocol: { UDP: number; TCP: number; ICMP: number };
  SocketLevel: { SOL_SOCKET: number; IPPROTO_IP: number };
  SocketOption: { SO_RCVBUF: number; SO_SNDBUF: number; IP_HDRINCL: number };
}

let mod: RawSocketModule | null = null;

/** The addon, or a clear error saying how to build it. */
export function rawSocketModule(): RawSocketModule {
  if (mod) return mod;
  try {
    mod = createRequire(import.meta.url)('raw-socket') as RawSocketModule;
  } catch (e) {
    throw new Error(`loadgen: the raw-socket addon does not load (${(e as Error).message}); run \`npm ci\` (its install script builds it with node-gyp)`);
  }
  return mod;
}

const noop = (): void => {};

/** Linux's IPPROTO_IPV6 and IPV6_HDRINCL (<linux/in6.h>; the addon names the latter only on Windows) */
const IPPROTO_IPV6 = 41;
const IPV6_HDRINCL = 36;

/**
 * One raw IPv4 socket for `protocol` (17 UDP, 6 TCP) with IP_HDRINCL: every
 * packet sent carries its own IP header (chosen source address), and every
 * packet of that protocol arriving in the namespace is read with its header.
 *
 * `family` 6: an AF_INET6 raw socket with IPV6_HDRINCL: packets are sent with
 * their own IPv6 header too, but (as for every IPv6 raw socket) they are read
 * WITHOUT it: the buffer starts at the L4 header and the source address comes
 * as text (the third argument of onPacket).
 */
export class RawIp {
  private readonly sock: RawSocket;
  private readonly rx = Buffer.alloc(4096);
  private closed = false;
  sendErrors = 0;
  firstSendError = '';

  constructor(protocol: number, onPacket: (buf: Buffer, len: number, source: string) => void, family: 4 | 6 = 4) {
    const m = rawSocketModule();
    try {
      this.sock = m.createSocket({ protocol, bufferSize: 4096, addressFamily: family === 6 ? m.AddressFamily.IPv6 : m.AddressFamily.IPv4 });
      if (family === 6) this.sock.setOption(IPPROTO_IPV6, IPV6_HDRINCL, 1);
      else this.sock.setOption(m.SocketLevel.IPPROTO_IP, m.SocketOption.IP_HDRINCL, 1);
      this.sock.setOption(m.SocketLevel.SOL_SOCKET, m.SocketOption.SO_RCVBUF, 8 << 20);
      this.sock.setOption(m.SocketLevel.SOL_SOCKET, m.SocketOption.SO_SNDBUF, 8 << 20);
    } catch (e) {
      throw new Error(`loadgen: cannot open a raw socket (${(e as Error).message}): it needs root or CAP_NET_RAW`);
    }
    const rx = this.rx;
    const deliver = (_b: Buffer, bytes: number, source: string): void => onPacket(rx, bytes, source);
    const wrap = this.sock.wrap;
    wrap.removeAllListeners('recvReady');
    wrap.on('recvReady', () => {
      // drain until EAGAIN (the socket is non-blocking): many packets per readable event
      for (let i = 0; i < 4096 && !this.closed; i++) {
        try {
          wrap.recv(rx, deliver);
        } catch {
          return;
        }
      }
    });
    wrap.on('error', noop);
  }

  /** Send one whole IP packet (header included); false when the kernel refused it. */
  send(buf: Buffer, len: number, dst: string): boolean {
    try {
      this.sock.wrap.send(buf, 0, len, dst, noop);
      return true;
    } catch (e) {
      if (this.sendErrors++ === 0) this.firstSendError = (e as Error).message;
      return false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.sock.close();
    } catch {
      /* closed already */
    }
  }
}
