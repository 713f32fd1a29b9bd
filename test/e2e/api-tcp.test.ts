/**
 * The API's TCP listener: only with a bearer token. It runs inside a network
 * namespace of this test (its own loopback; nothing listens in the root
 * namespace); the clients run there too, the Unix socket is reached from here.
 * A request without the token, or with a wrong one, is refused (401) and
 * changes nothing.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ApiClient } from '../../control/client.ts';
import type { RuleSet } from '../../control/types.ts';
import { ROOT, netnsSkipReason, testPrefix, withNetns, nsExec } from './helpers.ts';

const BIN = join(ROOT, 'bin', 'tunproxy.js');
const GOLDEN = join(ROOT, 'test/fixtures/iptables/golden-ruleset.json');
const golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as RuleSet;

const skip = netnsSkipReason();
if (skip) {
  t.plan(0, `API TCP listener tests skipped: ${skip}`);
} else {
  const ns = `${testPrefix('tcp')}`;
  const dir = mkdtempSync(join(tmpdir(), 'tp-e2e-tcp-'));
  const sock = join(dir, 'api.sock');
  const token = 'c0ffee'.repeat(6);
  const tokenFile = join(dir, 'token');
  const wrongFile = join(dir, 'wrong');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  writeFileSync(wrongFile, 'not-the-token-at-all-0000\n', { mode: 0o600 });
  const URL = 'http://127.0.0.1:9440';
  withNetns(t, [ns]);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  const server = `
import { readFileSync } from 'node:fs';
import { Dataplane } from ${JSON.stringify(join(ROOT, 'control/dataplane.ts'))};
import { startApi, readTokenFile } from ${JSON.stringify(join(ROOT, 'control/server.ts'))};
const dp = new Dataplane();
dp.holder.apply(JSON.parse(readFileSync(${JSON.stringify(GOLDEN)}, 'utf8')));
const srv = await startApi(dp, { socket: ${JSON.stringify(sock)}, listen: '127.0.0.1:9440', token: readTokenFile(${JSON.stringify(tokenFile)}) });
console.log('ready ' + srv.tcp.port);
process.on('SIGTERM', () => srv.close().then(() => process.exit(0)));`;
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', '--input-type=module', '-e', server], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.once('close', r));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => l.startsWith('ready') && resolve());
    child.once('close', () => reject(new Error(`the API server exited: ${stderr}`)));
  });

  /** a raw HTTP request from inside the namespace: status, www-authenticate, body */
  const raw = async (method: string, path: string, headers: Record<string, string>, body?: string) => {
    const code = `
const http = require('http');
const req = http.request(${JSON.stringify(URL + path)}, { method: ${JSON.stringify(method)}, headers: ${JSON.stringify({ ...headers, ...(body ? { 'content-type': 'application/json' } : {}) })} }, (res) => {
  let b = ''; res.on('data', (d) => (b += d));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, auth: res.headers['www-authenticate'] || null, body: b })));
});
req.end(${JSON.stringify(body ?? '')});`;
    const r = await nsExec(ns, [process.execPath, '-e', code], { timeoutMs: 15_000 });
    return JSON.parse(r.stdout) as { status: number; auth: string | null; body: string };
  };
  const cli = async (args: string[]) => nsExec(ns, [process.execPath, BIN, ...args], { timeoutMs: 30_000 });
  const unix = new ApiClient({ socket: sock });
  const generation = async () => (await unix.call<{ generation: number }>('GET', '/v1/stats')).body.generation;

  t.test('without the token, or with a wrong one: 401 and nothing changes', async (t) => {
    const none = await raw('GET', '/v1/ruleset', {});
    t.equal(none.status, 401);
    t.equal(none.auth, 'Bearer realm="tunproxy"');
    t.match(JSON.parse(none.body), { error: 'unauthorized', message: /needs Authorization: Bearer <token>/ });
    const basic = await raw('GET', '/healthz', { authorization: 'Basic dXNlcjpwYXNz' });
    t.equal(basic.status, 401, 'every route, health included, and no other scheme');
    const wrongPut = await raw('PUT', '/v1/ruleset', { authorization: 'Bearer not-the-token' }, JSON.stringify({ ...golden, services: [] }));
    t.equal(wrongPut.status, 401);
    t.match(JSON.parse(wrongPut.body), { error: 'unauthorized', message: /bearer token is wrong/ });
    t.equal(await generation(), 1, 'the rule set in force is unchanged');
    const wrong = await cli(['get', 'ruleset', '--server', URL, '--token-file', wrongFile]);
    t.equal(wrong.code, 1);
    t.match(wrong.stderr, /the bearer token is wrong/);
    const noToken = await cli(['get', 'ruleset', '--server', URL]);
    t.equal(noToken.code, 1);
    t.match(noToken.stderr, /--server needs --token-file/);
  });

  t.test('with the token: every route, the CLI through --server', async (t) => {
    const ok = await raw('GET', '/healthz', { authorization: `Bearer ${token}` });
    t.equal(ok.status, 200);
    const got = await cli(['get', 'ruleset', '--server', URL, '--token-file', tokenFile]);
    t.equal(got.code, 0, got.stderr);
    t.same(JSON.parse(got.stdout), golden);
    const rs = join(dir, 'rs.json');
    writeFileSync(rs, JSON.stringify({ ...golden, services: golden.services.slice(0, 3) }));
    const applied = await cli(['apply', '-f', rs, '--server', URL, '--token-file', tokenFile]);
    t.equal(applied.code, 0, applied.stderr);
    t.match(applied.stderr, /generation 2, 3 services/);
    t.equal(await generation(), 2);
    const stats = await cli(['stats', '--server', URL, '--token-file', tokenFile, '-o', 'json']);
    t.match(JSON.parse(stats.stdout), { generation: 2, ruleSet: { services: 3 } });
  });

  t.test('the Unix socket needs no token (its 0600 mode is the access control)', async (t) => {
    t.equal((await unix.request('GET', '/v1/ruleset')).status, 200);
  });

  t.test('tunproxy run refuses --listen without --token-file before opening anything', async (t) => {
    const r = await cli(['run', '--tun', 'tpx0', '--listen', '127.0.0.1:9441', '--state-dir', join(dir, 'st'), '--socket', join(dir, 'x.sock')]);
    t.equal(r.code, 1);
    t.match(r.stderr, /--listen needs --token-file/);
    const short = join(dir, 'short');
    writeFileSync(short, 'abc\n', { mode: 0o600 });
    const r2 = await cli(['run', '--tun', 'tpx0', '--listen', '127.0.0.1:9441', '--token-file', short, '--state-dir', join(dir, 'st'), '--socket', join(dir, 'x.sock')]);
    t.equal(r2.code, 1);
    t.match(r2.stderr, /at least 16 characters/);
  });
}
