/**
 * A Unix socket's path made usable before listening on it (the API server's,
 * `tunproxy tun-holder`'s): its directory, a stale socket of a dead process
 * removed, a live one refused. Light on purpose (node: modules only): the
 * holder's command loads it without the API server.
 */
import { existsSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';

/** Is something accepting connections on this Unix socket? */
function socketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const done = (alive: boolean) => {
      s.destroy();
      resolve(alive);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(1000, () => done(false));
  });
}

/**
 * Make the socket path usable: its directory (when created here: 0700, with
 * search permission for the group or others when the socket's mode admits
 * them), a stale socket from a dead process removed.
 */
export async function prepareSocketPath(path: string, mode: number, who: string): Promise<void> {
  const dir = dirname(path);
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 | (mode & 0o070 ? 0o010 : 0) | (mode & 0o007 ? 0o001 : 0) });
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`--socket ${path}: the path exists and is not a socket; remove it or choose another --socket`);
  if (await socketAlive(path)) throw new Error(`--socket ${path}: another process is serving on it (another ${who} for this device?); stop it or choose another --socket`);
  rmSync(path, { force: true });
}
