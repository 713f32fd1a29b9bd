/**
 * Passing an open file between processes (the TUN addon's sendFd / fetchFd /
 * adopt, what `tunproxy tun-holder` and `tunproxy run --tun-holder` use),
 * without a TUN: a child process serves a regular file's fd on a Unix
 * socket, this process fetches it and reads the file through it. A TUN
 * device needs CAP_NET_ADMIN; that part is test/e2e/tun-holder.test.ts.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { fetchFd, loadTunAddon, TunDevice } from '../../dataplane/tun/index.ts';
import type { TunError } from '../../dataplane/tun/index.ts';

const ADDON = fileURLToPath(new URL('../../build/Release/tun.node', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tp-fdpass-'));
const children: ChildProcess[] = [];
t.teardown(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** a child serving on `sock`: with mode "fd" each connection gets the fd of `file` (SCM_RIGHTS), with "none" one plain byte */
async function serve(sock: string, file: string, mode: 'fd' | 'none'): Promise<{ child: ChildProcess; lines: string[] }> {
  const src = `
const a = require(${JSON.stringify(ADDON)});
const fs = require('fs'), net = require('net');
const fd = fs.openSync(${JSON.stringify(file)}, 'r');
net.createServer((c) => {
  if (${JSON.stringify(mode)} === 'fd') console.log('peer ' + a.sendFd(c._handle.fd, fd));
  else c.write('x');
  c.end();
}).listen(${JSON.stringify(sock)}, () => console.log('ready'));`;
  const child = spawn(process.execPath, ['-e', src], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      lines.push(l);
      if (l === 'ready') resolve();
    });
    child.on('exit', (code) => reject(new Error(`server exited (${code})`)));
  });
  return { child, lines };
}

const file = join(dir, 'data');
writeFileSync(file, 'the held file\n');

t.test('fetchFd: the fd a peer sends is the same open file, close-on-exec; the peer learns our pid', async (t) => {
  const sock = join(dir, 'fd.sock');
  const srv = await serve(sock, file, 'fd');
  const fd = fetchFd(sock, 2000);
  t.teardown(() => closeSync(fd));
  const buf = Buffer.alloc(64);
  const n = readSync(fd, buf, 0, 64, 0);
  t.equal(buf.subarray(0, n).toString(), 'the held file\n', 'reads the file the peer opened');
  t.equal(fstatSync(fd).ino, statSync(file).ino, 'the same inode');
  const flags = parseInt(/^flags:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
  t.ok(flags & 0o2000000, 'close-on-exec (MSG_CMSG_CLOEXEC): a child tunproxy starts does not inherit it');
  await new Promise((r) => setTimeout(r, 100));
  t.same(srv.lines.filter((l) => l.startsWith('peer ')), [`peer ${process.pid}`], "the sender saw this process's pid (SO_PEERCRED)");
  // a second client gets its own duplicate
  const fd2 = fetchFd(sock, 2000);
  t.not(fd2, fd);
  closeSync(fd2);
});

t.test('adopt refuses an fd that is not a TUN device, with the reason, and closes it', async (t) => {
  const sock = join(dir, 'fd2.sock');
  await serve(sock, file, 'fd');
  const fd = fetchFd(sock, 2000);
  const a = loadTunAddon();
  t.throws(() => a.adopt(fd), { code: 'ENOTTY', message: /not an attached TUN device: TUNGETIFF failed with ENOTTY/ });
  t.throws(() => fstatSync(fd), { code: 'EBADF' }, 'the fd is closed');
  t.throws(() => TunDevice.fromHolder(sock, { timeoutMs: 2000 }), { message: /not an attached TUN device/ });
});

t.test('errors name the socket and say what to do', async (t) => {
  t.throws(() => fetchFd(join(dir, 'nobody.sock'), 500), { code: 'ENOENT', syscall: 'connect', message: /nobody\.sock failed: ENOENT — no such socket: is the holder running/ });
  // a socket file nobody listens on (its server gone)
  const dead = join(dir, 'dead.sock');
  const srv = await serve(dead, file, 'fd');
  srv.child.kill('SIGKILL');
  await new Promise((r) => srv.child.once('exit', r));
  t.throws(() => fetchFd(dead, 500), { code: 'ECONNREFUSED', message: /nobody listens there/ });
  // a peer that answers without an fd
  const plain = join(dir, 'plain.sock');
  await serve(plain, file, 'none');
  t.throws(() => fetchFd(plain, 2000), { code: 'EPROTO', message: /closed or answered without an fd/ });
  t.throws(() => fetchFd(file, 500), { code: 'ECONNREFUSED' }, 'a regular file: connect refuses');
  t.throws(() => fetchFd('x'.repeat(200), 500), { code: 'ENAMETOOLONG', message: /must be 1 to 107 bytes/ });
  t.throws(() => TunDevice.fromHolder(''), TypeError);
});

t.test('fetchFd gives up after the timeout when the peer says nothing', async (t) => {
  const sock = join(dir, 'silent.sock');
  const child = spawn(process.execPath, ['-e', `require('net').createServer(() => {}).listen(${JSON.stringify(sock)}, () => console.log('ready'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((r) => createInterface({ input: child.stdout! }).on('line', (l) => l === 'ready' && r()));
  const t0 = Date.now();
  let err: TunError | null = null;
  try {
    fetchFd(sock, 300);
  } catch (e) {
    err = e as TunError;
  }
  t.equal(err?.code, 'ETIMEDOUT');
  t.match(err?.message, /sent nothing in time/);
  t.ok(Date.now() - t0 >= 250, `waited ${Date.now() - t0} ms`);
});
