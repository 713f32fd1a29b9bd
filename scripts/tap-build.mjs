// Builds tap's Test class for the plugins package.json configures ("tap":
// {"plugin": ["!@tapjs/typescript"]}) when the class built in node_modules is
// another one: a fresh `npm ci` leaves tap's default, ts-node's plugin
// included. tap then rebuilds by itself at the start of its first run, but
// that run's test files still get the default plugins, @tapjs/typescript's
// ts-node loader ahead of tsx among them: measured on the AMD machine, a fresh
// clone's unit and property files (-j2) took 304 s in that first run and
// 164 s in the next; with this build first, 180 s. Run by scripts/test.sh
// before the tests; a no-op (~0.3 s) when the class is current.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TapConfig } from '@tapjs/config';

const root = fileURLToPath(new URL('..', import.meta.url));
const config = await TapConfig.load(root);
const { signature } = await import('@tapjs/test');
if (signature !== config.pluginSignature) {
  process.stderr.write("tap-build: building tap's Test class for the configured plugins (tap build)\n");
  const r = spawnSync(process.execPath, [fileURLToPath(new URL('../node_modules/.bin/tap', import.meta.url)), 'build'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.stderr.write(`tap-build: tap build exited ${r.status}: the first run rebuilds it by itself (slower)\n`);
}
