/**
 * `tunproxy tun-holder`: keep the TUN device's file open while `tunproxy run`
 * restarts, and hand a duplicate of it to each `tunproxy run --tun-holder`.
 *
 * Linux queues the packets routed into a TUN only while some process holds
 * the device's file open: with none, they are dropped. So during a restart
 * of `tunproxy run` (SIGTERM, a crash, kill -9, an upgrade) the packets of
 * those hundreds of milliseconds are lost. The holder is a second, small,
 * long-lived process that opens the device exactly as `tunproxy run` would
 * (IFF_TUN | IFF_NO_PI, with the virtio-net header of --offload auto,
 * IFF_MULTI_QUEUE with --multi-queue), never reads it, and answers every
 * connection on its Unix socket with a duplicate of that fd (SCM_RIGHTS):
 * both processes then share one open file, one queue. When `tunproxy run`
 * stops, the holder's copy keeps the device attached, packets wait in its
 * queue (up to txqueuelen of them), and the next `tunproxy run` reads them
 * first. As Envoy's hot restart and Cilium's agent restarts keep their
 * sockets and maps, this keeps the queue.
 */
import type { Command } from 'commander';
import type { TunDevice as Tun } from '../../dataplane/tun/index.ts';

/**
 * where the holder of `tun` serves by default: /run/tunproxy/<tun>.holder.sock, beside run's API
 * socket (control/api/local.ts's DEFAULT_SOCKET_DIR, repeated: `tunproxy --help` loads this file)
 */
export function defaultHolderSocketPath(tun: string): string {
  return `/run/tunproxy/${tun}.holder.sock`;
}

export interface TunHolderOptions {
  tun: string;
  socket?: string;
  socketMode: string;
  offload: string;
  multiQueue?: boolean;
  txqueuelen: string;
}

function log(msg: string): void {
  process.stderr.write(`tunproxy tun-holder: ${msg}\n`);
}

export function registerTunHolder(program: Command): void {
  program
    .command('tun-holder')
    .description("keep the TUN device open while `tunproxy run` restarts and hand it to each run (run --tun-holder): packets wait in the device's queue instead of being dropped")
    .requiredOption('-t, --tun <name>', 'TUN device to hold (created persistent if missing)')
    .option('--socket <path>', 'Unix socket on which the fd is handed out (default /run/tunproxy/<tun>.holder.sock)')
    .option('--socket-mode <octal>', 'permissions of the socket: whoever can connect gets the device', '600')
    .option('--offload <auto|off>', 'open the TUN as `tunproxy run --offload` does (auto: with a virtio-net header); must be the same as run\'s', 'auto')
    .option('--multi-queue', 'open the TUN with IFF_MULTI_QUEUE, as `tunproxy run --multi-queue`')
    .option('--txqueuelen <packets>', "set the device's queue to this many packets: what may wait while no tunproxy run reads (0: keep the device's; run's --txqueuelen sets it too)", '0')
    .addHelpText('after', `
The holder opens the device once, never reads it, and answers every
connection on --socket with a duplicate of its file descriptor (SCM_RIGHTS):
tunproxy run --tun-holder then reads and writes that same open file. While
run restarts (SIGTERM, kill -9, a crash, an upgrade), the holder's copy keeps
the device attached, so what is routed into it waits in its queue (up to
txqueuelen packets: size it to the restart, e.g. 20 000 packets/s x 0.5 s)
instead of being dropped, and the next run reads it first.

It keeps: the open file, hence the queue and the device (created persistent
when the holder makes it). It does not keep: the connection table (that is
the pinned table in run's --pin-dir), the rule set (run's --state-dir), the
offloads (run sets them on the device at each start). Stopping the holder
while run runs is harmless (run keeps its copy); run then needs a holder at
its next start. Start the holder first and leave it running: a systemd unit
of its own that tunproxy.service requires, or a container of its own in the
DaemonSet's pod (README "The device keeps its queue").

Example (the lab's node namespace):
  tunproxy tun-holder --tun tun0 --socket /run/tunproxy/tun0.holder.sock &
  tunproxy run --tun tun0 --tun-holder /run/tunproxy/tun0.holder.sock --rules r.json`)
    .action((o: TunHolderOptions) => holdTun(o));
}

export async function holdTun(o: TunHolderOptions): Promise<void> {
  if (o.offload !== 'auto' && o.offload !== 'off') throw new Error(`--offload: ${JSON.stringify(o.offload)} is not one of auto, off`);
  if (!/^[0-7]{3}$/.test(o.socketMode)) throw new Error(`--socket-mode: ${o.socketMode} must be octal permissions like 600 or 660`);
  const mode = parseInt(o.socketMode, 8);
  const { parseTxQueueLen, prepareDevice } = await import('../worker/priority.ts');
  const txqueuelen = parseTxQueueLen(o.txqueuelen ?? '0');
  const socket = o.socket ?? defaultHolderSocketPath(o.tun);
  const [{ TunDevice, sendFd }, { existsSync, chmodSync, mkdtempSync, readFileSync, renameSync, rmSync }, { dirname, join }, net] = await Promise.all([
    import('../../dataplane/tun/index.ts'), import('node:fs'), import('node:path'), import('node:net'),
  ]);
  const { prepareSocketPath } = await import('../socket-path.ts');
  await prepareSocketPath(socket, mode, 'tun-holder');
  const existed = existsSync(`/sys/class/net/${o.tun}`);
  let tun: Tun;
  try {
    tun = TunDevice.open(o.tun, { multiQueue: !!o.multiQueue, vnetHdr: o.offload === 'auto' });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EBUSY') err.message += ` (a tunproxy run holds ${o.tun} open itself: stop it, start the holder, then start run with --tun-holder ${socket})`;
    throw err;
  }
  prepareDevice(tun, { created: !existed, txqueuelen, who: 'the holder', log });
  let handed = 0;
  let stopped = false;
  let done: () => void = () => {};
  const stop = (why: string, exitCode = 0) => {
    if (stopped) return;
    stopped = true;
    log(`${why}: stopping; ${handed} hand-outs${exitCode === 0 ? `; ${tun.name} stays attached while a tunproxy run still holds it` : ''}`);
    server.close();
    rmSync(socket, { force: true });
    tun.close();
    if (exitCode !== 0) process.exitCode = exitCode;
    done();
  };
  const server = net.createServer((c) => {
    // never read: the client sends nothing; the answer is one byte with the fd, then the close
    c.pause();
    c.on('error', () => {});
    const sockFd = (c as unknown as { _handle?: { fd?: number } })._handle?.fd;
    // a device deleted while held leaves a detached file: hand nothing out, and go, so that a
    // service manager starts a holder that makes the device again (the client is told no fd came)
    const att = tun.attached();
    if (!att.ok) {
      log(`${o.tun} is no longer attached to the held file (${att.reason}): nothing handed out; exiting`);
      c.destroy();
      stop('device gone', 1);
      return;
    }
    try {
      if (typeof sockFd !== 'number' || sockFd < 0) throw new Error('the connection has no file descriptor');
      const pid = sendFd(sockFd, tun.fd);
      handed++;
      log(`handed ${tun.name} to pid ${pid} (${handed} so far)`);
    } catch (e) {
      log(`could not hand ${tun.name} over: ${(e as Error).message}`);
    }
    c.destroy();
  });
  // created where no one else can reach it, set to the mode asked for, then renamed into place
  const hidden = mkdtempSync(join(dirname(socket), '.tunproxy-holder-'));
  try {
    const tmp = join(hidden, 's');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(tmp, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(tmp, mode);
    renameSync(tmp, socket);
  } catch (e) {
    tun.close();
    throw new Error(`--socket ${socket}: cannot serve on it: ${(e as Error).message}`);
  } finally {
    rmSync(hidden, { recursive: true, force: true });
  }
  server.on('error', (e) => log(`socket error: ${e.message}`));
  const q = (() => {
    try {
      return Number(readFileSync(`/sys/class/net/${tun.name}/tx_queue_len`, 'utf8').trim());
    } catch {
      return NaN;
    }
  })();
  log(
    `holding ${tun.name} (${o.offload === 'auto' ? 'virtio-net header' : 'no virtio-net header'}${o.multiQueue ? ', multi-queue' : ''}; ` +
      `queue ${Number.isFinite(q) ? `${q} packets` : 'unknown'}), handing it out on ${socket}; ready`,
  );
  await new Promise<void>((resolve) => {
    done = resolve;
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGHUP', () => log('SIGHUP: nothing to reload'));
  });
}

