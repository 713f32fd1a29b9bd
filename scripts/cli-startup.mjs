// The command line's start time: the median wall time of 10 runs of each
// command on a small file, as a user runs it (node bin/tunproxy.js ...).
// Usage: node scripts/cli-startup.mjs [runs]   (npm run build first: a stale
// dist/ makes bin/tunproxy.js fall back to tsx, which this script reports)
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { distStale } from '../bin/dist.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const runs = Number(process.argv[2] ?? 10);
const stale = distStale(root);
console.log(stale === null ? 'dist/: current (compiled JavaScript)' : `dist/: NOT current (${stale}): the sources run through tsx`);
const dump = 'test/fixtures/iptables/kube-proxy-v1.29.save';
const median = (ms) => {
  ms.sort((a, b) => a - b);
  return runs % 2 ? ms[(runs - 1) / 2] : (ms[runs / 2 - 1] + ms[runs / 2]) / 2;
};
{
  // node itself, for scale: what no command line can start under on this machine right now
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    spawnSync(process.execPath, ['-e', '0']);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  console.log(`${median(ms).toFixed(0).padStart(5)} ms  median of ${runs}  node -e 0 (node's own start, for scale)`);
}
const commands = [
  ['--help'],
  ['validate', 'examples/demo-ruleset.json'],
  ['import', 'iptables', dump, '--node-address', '192.168.0.2', '-q'],
  ['trace', '--rules', 'examples/demo-ruleset.json', 'udp', '10.0.0.2:40000', '10.32.0.10:53'],
  ['trace', '--iptables', dump, '--node-address', '192.168.0.2', 'tcp', '10.0.0.2:40000', '172.30.0.41:80'],
];
for (const args of commands) {
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, ['bin/tunproxy.js', ...args], { cwd: root, encoding: 'utf8' });
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (r.status !== 0) {
      console.error(`tunproxy ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
      process.exit(1);
    }
  }
  const m = median(ms);
  console.log(`${m.toFixed(0).padStart(5)} ms  median of ${runs}  (min ${ms[0].toFixed(0)}, max ${ms[runs - 1].toFixed(0)})  tunproxy ${args.join(' ')}`);
}
