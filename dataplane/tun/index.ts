/**
 * TunDevice: the typed face of the native TUN addon (dataplane/tun/tun.c,
 * built by node-gyp into build/Release/tun.node).
 *
 * Packets move in batches through one shared buffer cut into fixed-size slots:
 * readBatch fills slot i (at i * slotSize) and lengths[i]; writeBatch writes
 * count packets, each from its offsets[i] / lengths[i]. One native call per
 * batch, readiness from a uv_poll_t on the main event loop (never the thread
 * pool). With vnetHdr, every packet starts with a virtio_net_hdr of
 * vnetHeaderSize bytes: the IP header is at slot + vnetHeaderSize, and written
 * packets must carry the header too. With offloads on (enableOffloads) a packet
 * can be a 64 KiB GSO super-packet: readPacked reads packets one after another
 * into one buffer instead of fixed slots. persist() makes the device outlive
 * the process (TUNSETPERSIST). fromHolder() takes the open TUN file from a
 * `tunproxy tun-holder` over a Unix socket (SCM_RIGHTS) instead of opening
 * the device, so that packets wait in the device queue while tunproxy restarts.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Counters of one TUN file descriptor (numbers since open). */
export interface TunStats {
  rxPackets: number;
  rxBytes: number;
  /** packets larger than the slot: dropped, never handed over partly */
  rxTruncated: number;
  /** read errors other than EAGAIN/EINTR */
  rxErrors: number;
  txPackets: number;
  txBytes: number;
  /** writeBatch calls stopped early because the device queue was full */
  txAgain: number;
  /** packets the kernel refused (EINVAL for a malformed packet, ...) */
  txErrors: number;
  /** txErrors per errno name, e.g. { EINVAL: 2 } */
  txErrno: Record<string, number>;
}

export interface TunOpenOptions {
  /** IFF_MULTI_QUEUE: one fd per queue; the device must have been created with multi_queue */
  multiQueue?: boolean;
  /** IFF_VNET_HDR: every packet is preceded by a virtio_net_hdr (vnetHeaderSize bytes) */
  vnetHdr?: boolean;
}

/** A TUN error from the addon: code = errno name, errno = its (positive) number. */
export interface TunError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

interface Addon {
  open(name: string, flags: number): { fd: number; name: string };
  readBatch(fd: number, buf: Uint8Array, slotSize: number, maxPackets: number, lengths: Uint32Array): number;
  readPacked(fd: number, buf: Uint8Array, maxPackets: number, minSlot: number, reserve: number, offsets: Uint32Array, lengths: Uint32Array): number;
  writeBatch(fd: number, buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number;
  poll(fd: number, cb: (err: Error | null) => void): void;
  stopPoll(fd: number): void;
  close(fd: number): boolean;
  stats(fd: number): TunStats;
  setOffload(fd: number, flags: number): void;
  persist(fd: number, on: boolean): void;
  sendFd(sockFd: number, fd: number): number;
  recvFd(sockFd: number, timeoutMs: number): number;
  fetchFd(path: string, timeoutMs: number): number;
  adopt(fd: number): { fd: number; name: string; flags: number; sameNetns: boolean | null };
  info(fd: number): { name: string; flags: number };
  IFF_MULTI_QUEUE: number;
  IFF_VNET_HDR: number;
  TUN_F_CSUM: number;
  TUN_F_TSO4: number;
  TUN_F_TSO6: number;
  TUN_F_TSO_ECN: number;
  TUN_F_USO4: number;
  TUN_F_USO6: number;
  VNET_HDR_SIZE: number;
}

const ADDON_PATH = fileURLToPath(new URL('../../build/Release/tun.node', import.meta.url));
let addon: Addon | null = null;

/** Load the addon once; throws a sentence saying how to build it when it is missing. */
export function loadTunAddon(): Addon {
  if (addon) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const missing = err.code === 'MODULE_NOT_FOUND' || /cannot open shared object|no such file/i.test(err.message);
    throw new Error(
      missing
        ? `the TUN addon is not built (${ADDON_PATH} is missing): run \`npm install\` or \`npx node-gyp rebuild\` in the project root`
        : `loading the TUN addon ${ADDON_PATH} failed: ${err.message} — rebuild it with \`npx node-gyp rebuild\``,
      { cause: e },
    );
  }
  return addon;
}

/** Offload flags for setOffload (TUNSETOFFLOAD); only meaningful with vnetHdr. */
export const TUN_OFFLOAD = {
  get CSUM(): number { return loadTunAddon().TUN_F_CSUM; },
  get TSO4(): number { return loadTunAddon().TUN_F_TSO4; },
  get TSO6(): number { return loadTunAddon().TUN_F_TSO6; },
  get TSO_ECN(): number { return loadTunAddon().TUN_F_TSO_ECN; },
  get USO4(): number { return loadTunAddon().TUN_F_USO4; },
  get USO6(): number { return loadTunAddon().TUN_F_USO6; },
};

/** What enableOffloads got: the flags set, and the names of those on and of those the kernel refused. */
export interface OffloadResult {
  flags: number;
  on: string[];
  refused: string[];
  /** the kernel's answer to each refused step (e.g. "EINVAL") */
  errors: string[];
}

/** The largest packet a TUN with offloads hands over: a 64 KiB IP packet and its virtio header. */
export const MAX_OFFLOAD_PACKET = 65535 + 10;

export class TunDevice {
  /** the interface name the kernel reports (the requested one, or tunN when "" was asked) */
  readonly name: string;
  /** bytes of virtio_net_hdr before each packet: 0 unless opened with vnetHdr */
  readonly vnetHeaderSize: number;
  readonly multiQueue: boolean;
  #fd: number;
  readonly #addon: Addon;

  private constructor(a: Addon, fd: number, name: string, opts: TunOpenOptions) {
    this.#addon = a;
    this.#fd = fd;
    this.name = name;
    this.multiQueue = !!opts.multiQueue;
    this.vnetHeaderSize = opts.vnetHdr ? a.VNET_HDR_SIZE : 0;
  }

  /**
   * Attach to (or create) the TUN device `name`: IFF_TUN | IFF_NO_PI, non-blocking, close-on-exec.
   * Throws a TunError (code ENOENT, EACCES, EPERM, EBUSY, EINVAL, ENAMETOOLONG, ...) whose message says what to do.
   */
  static open(name: string, opts: TunOpenOptions = {}): TunDevice {
    if (typeof name !== 'string') throw new TypeError('TunDevice.open: name must be a string');
    const a = loadTunAddon();
    const flags = (opts.multiQueue ? a.IFF_MULTI_QUEUE : 0) | (opts.vnetHdr ? a.IFF_VNET_HDR : 0);
    const r = a.open(name, flags);
    return new TunDevice(a, r.fd, r.name, opts);
  }

  /**
   * Take the TUN file a `tunproxy tun-holder` keeps open: connect to its Unix socket, receive a
   * duplicate of its fd (SCM_RIGHTS), check it (a TUN, IFF_NO_PI, in this network namespace) and use
   * it as open() would have. Closing it closes this process's duplicate only: the holder's copy keeps
   * the device attached, so packets routed to it wait in its queue for the next process.
   * `name`, when given, must be the device the holder holds; multiQueue and vnetHdr must be what the
   * holder opened it with (they are fixed when a file attaches). Throws a TunError whose message says
   * what to do (ENOENT: no holder on that socket, ECONNREFUSED: a dead holder's socket, ...).
   */
  static fromHolder(socketPath: string, opts: TunOpenOptions & { name?: string; timeoutMs?: number } = {}): TunDevice {
    if (typeof socketPath !== 'string' || socketPath === '') throw new TypeError('TunDevice.fromHolder: socketPath must be a non-empty string');
    const a = loadTunAddon();
    const r = a.adopt(a.fetchFd(socketPath, opts.timeoutMs ?? 5000));
    const refuse = (msg: string): never => {
      a.close(r.fd);
      throw Object.assign(new Error(`the TUN device from the holder on ${socketPath}: ${msg}`), { code: 'EINVAL', errno: 22, syscall: 'adopt' });
    };
    if (r.sameNetns === false) refuse(`${r.name} is in another network namespace than this process: run the holder in this one`);
    if (opts.name !== undefined && opts.name !== r.name) refuse(`the holder holds ${r.name}, not ${opts.name}: give both the same --tun, or this one the holder's --socket`);
    const vnet = (r.flags & a.IFF_VNET_HDR) !== 0;
    const mq = (r.flags & a.IFF_MULTI_QUEUE) !== 0;
    const vnetText = (on: boolean) => (on ? 'with a virtio-net header (--offload auto)' : 'without a virtio-net header (--offload off)');
    if (vnet !== !!opts.vnetHdr) refuse(`the holder opened ${r.name} ${vnetText(vnet)}, this process needs it ${vnetText(!!opts.vnetHdr)}: start both with the same --offload`);
    if (mq !== !!opts.multiQueue) refuse(`the holder opened ${r.name} ${mq ? 'with' : 'without'} IFF_MULTI_QUEUE, this process ${opts.multiQueue ? 'with' : 'without'}: start both with the same --multi-queue`);
    return new TunDevice(a, r.fd, r.name, { multiQueue: mq, vnetHdr: vnet });
  }

  /** the file descriptor, -1 once closed */
  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * Read up to maxPackets queued packets, packet i into buf at i * slotSize, its length into lengths[i].
   * Returns the count; 0 when nothing is queued (never blocks). A packet longer than slotSize is
   * dropped and counted in stats().rxTruncated.
   */
  readBatch(buf: Uint8Array, slotSize: number, maxPackets: number, lengths: Uint32Array): number {
    return this.#addon.readBatch(this.#checkedFd(), buf, slotSize, maxPackets, lengths);
  }

  /**
   * Write count packets, packet i from buf[offsets[i], offsets[i] + lengths[i]).
   * Returns the packets consumed (written, or refused by the kernel and counted in stats().txErrno);
   * fewer than count only when the device queue is full (EAGAIN, stats().txAgain): retry the rest later.
   */
  writeBatch(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number {
    return this.#addon.writeBatch(this.#checkedFd(), buf, offsets, lengths, count);
  }

  /**
   * Call cb (on the main event loop) whenever the device has packets to read; level-triggered:
   * cb is called again while packets remain. Replaces an earlier callback. cb gets an Error only
   * when polling itself fails.
   */
  onReadable(cb: (err: Error | null) => void): void {
    this.#addon.poll(this.#checkedFd(), cb);
  }

  /** Stop calling the onReadable callback (the event loop may then exit). */
  stopReadable(): void {
    if (this.#fd >= 0) this.#addon.stopPoll(this.#fd);
  }

  /**
   * Read up to maxPackets queued packets one after another into buf: packet i at offsets[i]
   * (64-byte aligned, at least minSlot bytes after the previous one, so a reply of up to minSlot
   * bytes can replace it in place), its length in lengths[i]. Stops early when fewer than `reserve`
   * bytes (the largest packet expected) remain, so no packet is ever cut. Returns the count.
   * With offloads, where packets are up to 64 KiB, this keeps many small packets per call in a
   * buffer that holds only a few super-packets.
   */
  readPacked(buf: Uint8Array, maxPackets: number, minSlot: number, reserve: number, offsets: Uint32Array, lengths: Uint32Array): number {
    return this.#addon.readPacked(this.#checkedFd(), buf, maxPackets, minSlot, reserve, offsets, lengths);
  }

  /**
   * Turn on every offload the kernel takes (needs vnetHdr): checksum, TSO for IPv4 and IPv6 with
   * ECN, and USO for IPv4 and IPv6 (Linux 6.2 and later). When the kernel refuses a set (EINVAL:
   * an older kernel), the newest offloads are dropped one step at a time: USO, then TSO with ECN,
   * then TSO, then checksum. Returns what is on and what was refused.
   */
  enableOffloads(): OffloadResult {
    const a = this.#addon;
    const steps: Array<[string, number]> = [
      ['uso4+uso6', a.TUN_F_USO4 | a.TUN_F_USO6],
      ['tso-ecn', a.TUN_F_TSO_ECN],
      ['tso4+tso6', a.TUN_F_TSO4 | a.TUN_F_TSO6],
      ['csum', a.TUN_F_CSUM],
    ];
    const names: Array<[string, number]> = [
      ['csum', a.TUN_F_CSUM], ['tso4', a.TUN_F_TSO4], ['tso6', a.TUN_F_TSO6], ['tso-ecn', a.TUN_F_TSO_ECN],
      ['uso4', a.TUN_F_USO4], ['uso6', a.TUN_F_USO6],
    ];
    let flags = steps.reduce((f, [, b]) => f | b, 0);
    const refused: string[] = [];
    const errors: string[] = [];
    for (let i = 0; ; i++) {
      try {
        this.setOffload(flags);
        break;
      } catch (e) {
        const err = e as TunError;
        if (err.code !== 'EINVAL' || i >= steps.length) throw e;
        refused.push(steps[i][0]);
        errors.push(err.code);
        flags &= ~steps[i][1];
      }
    }
    return { flags, on: names.filter(([, b]) => (flags & b) !== 0).map(([n]) => n), refused, errors };
  }

  /**
   * Set the checksum / segmentation offloads (TUNSETOFFLOAD); any but 0 need vnetHdr to be of use.
   * They belong to the device, not the fd: setOffload(0) clears what an earlier user left.
   */
  setOffload(flags: number): void {
    this.#addon.setOffload(this.#checkedFd(), flags);
  }

  /**
   * TUNSETPERSIST: with on, the device outlives this fd (and the process), keeping its addresses
   * and routes, so a restarted process can attach to it again; with off, it goes away with its
   * last fd. Needs CAP_NET_ADMIN.
   */
  persist(on: boolean): void {
    if (typeof on !== 'boolean') throw new TypeError('TunDevice.persist: on must be a boolean');
    this.#addon.persist(this.#checkedFd(), on);
  }

  /**
   * Is the device still attached to this fd? TUNGETIFF answers with its name and flags; it fails
   * with EBADFD once the device was deleted (ip link delete) while the fd stayed open.
   */
  attached(): { ok: true; name: string; flags: number } | { ok: false; reason: string } {
    try {
      const r = this.#addon.info(this.#checkedFd());
      return { ok: true, name: r.name, flags: r.flags };
    } catch (e) {
      return { ok: false, reason: (e as Error).message };
    }
  }

  /** Counters since open; after close(), the last ones seen are not kept, so read them before. */
  stats(): TunStats {
    return this.#addon.stats(this.#checkedFd());
  }

  /** Stop polling and close the fd. Idempotent. A persistent device stays; a transient one disappears. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    this.#addon.close(fd);
  }

  #checkedFd(): number {
    if (this.#fd < 0) throw new Error(`TUN device ${this.name} is closed`);
    return this.#fd;
  }
}

/**
 * Send a duplicate of `fd` over the connected AF_UNIX stream socket `sockFd` (one byte with the fd
 * as SCM_RIGHTS). Returns the peer's pid (SO_PEERCRED), -1 when the socket does not say.
 */
export function sendFd(sockFd: number, fd: number): number {
  return loadTunAddon().sendFd(sockFd, fd);
}

/**
 * Connect to the AF_UNIX stream socket at `path` and take the one fd the peer sends (close-on-exec),
 * waiting at most timeoutMs. Blocks the thread meanwhile: for a start, not for a packet path.
 */
export function fetchFd(path: string, timeoutMs = 5000): number {
  return loadTunAddon().fetchFd(path, timeoutMs);
}

/** Receive one fd over the connected AF_UNIX socket `sockFd`, waiting at most timeoutMs. */
export function recvFd(sockFd: number, timeoutMs = 5000): number {
  return loadTunAddon().recvFd(sockFd, timeoutMs);
}
