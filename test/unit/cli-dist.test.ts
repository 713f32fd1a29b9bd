/**
 * The compiled command line (dist/): bin/tunproxy.js runs it only when it was
 * built from exactly the sources there are now (bin/dist.js), else the
 * sources through tsx; a stale dist/ is never run.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
// @ts-expect-error plain JavaScript without types
import { distStale, sourceTimes, BUILD_INFO } from '../../bin/dist.js';
import { DEFAULT_BODY_LIMIT as API_LIMIT } from '../../control/api/context.ts';
import { DEFAULT_BODY_LIMIT as RUN_LIMIT } from '../../control/commands/run.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

t.test('dist/ is current only when built from exactly the sources there are now', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'tp-dist-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'control/sub'), { recursive: true });
  mkdirSync(join(root, 'dataplane'), { recursive: true });
  mkdirSync(join(root, 'dist'), { recursive: true });
  for (const f of ['control/a.ts', 'control/sub/b.ts', 'dataplane/c.ts', 'tsconfig.json', 'tsconfig.build.json']) writeFileSync(join(root, f), '// x\n');
  t.match(distStale(root), /build-info\.json is missing/);
  const build = () => writeFileSync(join(root, BUILD_INFO), JSON.stringify({ sources: sourceTimes(root) }));
  build();
  t.equal(distStale(root), null, 'just built: current');
  const later = new Date(Date.now() + 5000);
  utimesSync(join(root, 'control/sub/b.ts'), later, later);
  t.match(distStale(root), /control\/sub\/b\.ts changed since the build/);
  build();
  writeFileSync(join(root, 'dataplane/new.ts'), '// new\n');
  t.match(distStale(root), /dataplane\/new\.ts is new since the build/);
  build();
  rmSync(join(root, 'control/a.ts'));
  t.match(distStale(root), /control\/a\.ts was removed since the build/);
  build();
  utimesSync(join(root, 'tsconfig.build.json'), later, later);
  t.match(distStale(root), /tsconfig\.build\.json changed/);
});

t.test('bin/tunproxy.js runs the sources through tsx when told to (or when dist/ is stale)', async (t) => {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/tunproxy.js'), 'validate', join(ROOT, 'examples/demo-ruleset.json')], { encoding: 'utf8', env: { ...process.env, TUNPROXY_NO_DIST: '1' } });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /demo-ruleset\.json: valid: 3 services/);
});

t.test("run's --max-body default is the API's", async (t) => {
  t.equal(RUN_LIMIT, API_LIMIT);
});

t.test('--help, validate and the client commands load no heavy module (API server, prom-client, yaml, the iptables stack, the dataplane)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-loads-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // a module loader hook that names every module resolved, on stderr
  writeFileSync(join(dir, 'hook.mjs'), "export async function resolve(s, c, n) { const r = await n(s, c); process.stderr.write('LOADED ' + r.url + '\\n'); return r; }\n");
  writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module'; register(${JSON.stringify('file://' + join(dir, 'hook.mjs'))});\n`);
  const heavy = /\/(fastify|prom-client|yaml|lru-cache)\/|control\/(server|compile|runtime|trace|iptables\/|api\/)|dataplane\/(tables|pipeline|conntrack|tun\/)/;
  for (const args of [['--help'], ['validate', join(ROOT, 'examples/demo-ruleset.json')]]) {
    const r = spawnSync(process.execPath, ['--import', join(dir, 'register.mjs'), join(ROOT, 'bin/tunproxy.js'), ...args], { encoding: 'utf8', cwd: ROOT });
    t.equal(r.status, 0, r.stderr.split('\n').filter((l) => !l.startsWith('LOADED ')).join('\n'));
    const loaded = r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice(7));
    t.ok(loaded.some((u) => /control\/cli\.(js|ts)$/.test(u)), `${args[0]}: the hook sees the modules (${loaded.length})`);
    t.same(loaded.filter((u) => heavy.test(u) && !/node_modules\/tsx\//.test(u)), [], `tunproxy ${args[0]}: nothing heavy loaded`);
  }
});
