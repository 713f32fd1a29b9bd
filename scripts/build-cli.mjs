// Compiles the command line to dist/ (tsc -p tsconfig.build.json) when dist/ is
// not current, and records what it was built from (dist/build-info.json, read
// by bin/dist.js). `--force` builds anyway; `--soft` (npm's prepare step)
// never fails the install: without a build the command line runs through tsx.
// Run by `npm run build`, npm's prepare step (npm ci / npm install) and
// scripts/setup.sh.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { BUILD_INFO, distStale, sourceTimes } from '../bin/dist.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const force = process.argv.includes('--force');
const soft = process.argv.includes('--soft');
const stale = force ? 'forced' : distStale(root);
if (stale === null) process.exit(0);
const before = sourceTimes(root);
let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  process.stderr.write('build-cli: typescript is not installed (a production install?): dist/ not built; bin/tunproxy.js runs the sources through tsx\n');
  process.exit(soft ? 0 : 1);
}
rmSync(join(root, 'dist'), { recursive: true, force: true });
try {
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
} catch {
  rmSync(join(root, 'dist'), { recursive: true, force: true });
  process.stderr.write('build-cli: tsc failed; bin/tunproxy.js runs the sources through tsx\n');
  process.exit(soft ? 0 : 1);
}
mkdirSync(join(root, 'dist'), { recursive: true });
// dataplane/tun finds the addon at ../../build/Release/tun.node from its own file
symlinkSync('../build', join(root, 'dist/build'));
// the times read before compiling: a source edited during the build leaves dist/ stale
writeFileSync(join(root, BUILD_INFO), JSON.stringify({ builtAt: new Date().toISOString(), reason: stale, sources: before }) + '\n');
process.stderr.write(`build-cli: dist/ built (${stale})\n`);
