import { performance } from 'node:perf_hooks';
import { RuleSetHolder } from '/work/wt-control/control/runtime.ts';
import { TablesEncoder, shareTables } from '/work/wt-control/dataplane/tables-wire.ts';
import { syntheticRuleSet } from '/work/wt-control/bench/gen.ts';
const rs = syntheticRuleSet(100000, { endpoints: 2 });
const h = new RuleSetHolder({ prepare: shareTables });
let t0 = performance.now(); h.apply(rs); console.log('apply', (performance.now() - t0).toFixed(0));
const enc = new TablesEncoder();
for (let i = 0; i < 5; i++) { t0 = performance.now(); enc.encode(h.current!); console.log('encode', (performance.now() - t0).toFixed(1)); }
const services = rs.services.slice(); services[500] = { ...services[500], endpoints: [{ address: '10.70.0.1' }] };
t0 = performance.now(); const r = h.apply({ ...rs, services }); console.log('patch apply', r.mode, (performance.now() - t0).toFixed(1));
for (let i = 0; i < 5; i++) {
  const s2 = services.slice(); s2[600 + i] = { ...s2[600 + i], endpoints: [{ address: '10.70.0.9' }] };
  h.apply({ ...rs, services: s2 });
  t0 = performance.now(); enc.encode(h.current!); console.log('encode after patch', enc.lastMode, (performance.now() - t0).toFixed(1));
}
