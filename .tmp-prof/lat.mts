import { mkdtempSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Dataplane } from '/work/wt-control/control/dataplane.ts';
import { ControlWorker } from '/work/wt-control/control/worker/spawn.ts';
import { ApiClient } from '/work/wt-control/control/client.ts';
import { startApi } from '/work/wt-control/control/server.ts';
import { syntheticRuleSet } from '/work/wt-control/bench/gen.ts';
const dir = mkdtempSync('/tmp/tp-lat-');
const rs = syntheticRuleSet(100000, { endpoints: 2 });
const body = Buffer.from(JSON.stringify(rs));
for (const mode of ['worker', 'in-process']) {
  const sock = `${dir}/${mode}.sock`;
  const dp = new Dataplane();
  let close: () => Promise<void>;
  if (mode === 'worker') {
    const cw = new ControlWorker(dp, { tun: 'x' + mode, stateDir: dir, socket: sock, socketExplicit: true, socketMode: 0o600, maxBody: 1 << 28, decider: 'compiled' });
    await cw.next('rules'); cw.post({ ctl: 'start-api' }); await cw.next('api');
    close = () => cw.stop();
    cw.on('installed', (_t: unknown, info: any) => console.log('installed', JSON.stringify(info)));
  } else {
    const { StateStore } = await import('/work/wt-control/control/persist.ts'); const store = new StateStore(dir, 'y.'); store.init(); const srv = await startApi(dp, { socket: sock, bodyLimit: 1 << 28, store });
    close = () => srv.close();
  }
  const c = new ApiClient({ socket: sock });
  let t0 = performance.now();
  const r = await c.request<any>('PUT', '/v1/ruleset', { body, contentType: 'application/json' });
  const put = performance.now() - t0;
  const svc = rs.services[500];
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    t0 = performance.now();
    const p = await c.request<any>('PATCH', `/v1/services/${svc.namespace}/${svc.name}`, { body: { endpoints: [{ address: `10.70.0.${i + 1}` }] }, contentType: 'application/merge-patch+json' });
    times.push(performance.now() - t0);
    if (p.status !== 200) console.log(p.status, p.text);
  }
  console.log(mode, 'PUT 100k', put.toFixed(0), 'ms (compileMs', r.body.compileMs.toFixed(0), ') PATCH one service', times.map((x) => x.toFixed(1)).join(' '), 'ms; gen in force', dp.tables?.generation);
  await close();
}
