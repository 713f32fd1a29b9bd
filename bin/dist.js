// Whether dist/ (the command line compiled by `tsc -p tsconfig.build.json`) is
// current: built from exactly the TypeScript sources there are now, none of them
// changed since. Plain JavaScript, so that bin/tunproxy.js can ask before it
// loads anything else; a few hundred stat() calls, well under a millisecond
// each.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/** The directories compiled into dist/ (tsconfig.build.json's "include"). */
export const SOURCE_DIRS = ['control', 'dataplane'];
/** Files whose change also calls for a new build. */
export const BUILD_FILES = ['tsconfig.json', 'tsconfig.build.json'];
export const BUILD_INFO = 'dist/build-info.json';

/** Every file the build reads, relative to root, with its modification time (ms). */
export function sourceTimes(root) {
  const out = {};
  const walk = (dir) => {
    for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out[p] = statSync(join(root, p)).mtimeMs;
    }
  };
  for (const d of SOURCE_DIRS) walk(d);
  for (const f of BUILD_FILES) out[f] = statSync(join(root, f)).mtimeMs;
  return out;
}

/** null when dist/ is current, else why not (a sentence). */
export function distStale(root) {
  let info;
  try {
    info = JSON.parse(readFileSync(join(root, BUILD_INFO), 'utf8'));
  } catch {
    return `${BUILD_INFO} is missing`;
  }
  let now;
  try {
    now = sourceTimes(root);
  } catch (e) {
    return `cannot list the sources: ${e.message}`;
  }
  const built = info.sources ?? {};
  for (const [f, t] of Object.entries(now)) {
    if (!(f in built)) return `${f} is new since the build`;
    if (t !== built[f]) return `${f} changed since the build`;
  }
  for (const f of Object.keys(built)) if (!(f in now)) return `${relative('.', f)} was removed since the build`;
  return null;
}
