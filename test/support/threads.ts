/**
 * tunproxy run's two threads in one, for tests: the packet thread's host
 * (control/worker/host.ts) and the control worker's side of it
 * (control/worker/remote.ts) on the two ends of a MessageChannel; and a
 * device that moves one packet when kicked, so that a swap waiting for the
 * next batch takes effect when a test says so.
 */
import { MessageChannel } from 'node:worker_threads';
import type { Dataplane } from '../../control/dataplane.ts';
import { PacketHost } from '../../control/worker/host.ts';
import { RemotePacketSide } from '../../control/worker/remote.ts';
import type { PacketDevice } from '../../dataplane/loop.ts';

/** The host on `dp` and the remote side that talks to it; both ends closed at the test's teardown. */
export function twoThreads(t: { teardown(fn: () => void): void }, dp: Dataplane): { host: PacketHost; remote: RemotePacketSide } {
  const ch = new MessageChannel();
  t.teardown(() => {
    ch.port1.close();
    ch.port2.close();
  });
  const host = new PacketHost(dp, ch.port1);
  const remote = new RemotePacketSide(ch.port2);
  ch.port1.on('message', (m) => host.handle(m));
  ch.port2.on('message', (m) => remote.handle(m));
  return { host, remote };
}

/** A device that delivers one 2-byte packet (dropped as malformed) when kicked: a batch, so a pending swap takes effect. */
export class KickDevice implements PacketDevice {
  readonly name = 'kick0';
  readonly vnetHeaderSize = 0;
  private pending = 0;
  private cb: ((err: Error | null) => void) | null = null;
  readBatch(_buf: Uint8Array, _slot: number, _max: number, lengths: Uint32Array): number {
    if (this.pending === 0) return 0;
    this.pending--;
    lengths[0] = 2;
    return 1;
  }
  writeBatch(_b: Uint8Array, _o: Uint32Array, _l: Uint32Array, n: number): number {
    return n;
  }
  onReadable(cb: (err: Error | null) => void): void {
    this.cb = cb;
  }
  stopReadable(): void {
    this.cb = null;
  }
  kick(): void {
    this.pending++;
    this.cb?.(null);
  }
}
