#!/usr/bin/env node
// tunproxy: the command line. Runs the compiled JavaScript in dist/ when it is
// current (built by `npm run build`, `npm ci` and scripts/setup.sh from exactly
// the sources there are now), else the TypeScript sources through tsx: a
// stale dist/ is never run.
import { fileURLToPath } from 'node:url';
import { distStale } from './dist.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const stale = process.env.TUNPROXY_NO_DIST ? 'TUNPROXY_NO_DIST is set' : distStale(root);
if (stale === null) {
  await import('../dist/control/cli.js');
} else {
  if (process.stderr.isTTY && !process.env.TUNPROXY_NO_DIST) {
    process.stderr.write(`tunproxy: running the TypeScript sources through tsx (slower to start): ${stale}; \`npm run build\` compiles them\n`);
  }
  const { register } = await import('tsx/esm/api');
  register();
  await import('../control/cli.ts');
}
