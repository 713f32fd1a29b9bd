/**
 * `tunproxy get ruleset|services [NS/NAME]`: what the running tunproxy has in force.
 */
import type { Command } from 'commander';
import type { RuleSet, Service } from '../types.ts';
import { ApiRequestError } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_USAGE, addClientOptions, clientFrom, err, outputOption, print, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';

interface GetFlags extends ClientFlags {
  output: string;
  namespace?: string;
}

/** kubectl-like table rows for services */
export function servicesTable(services: readonly Service[], wide: boolean): string {
  const rows: string[][] = [['NAMESPACE', 'NAME', 'CLUSTER-IP', 'EXTERNAL-IP', 'PORT(S)', 'ENDPOINTS', ...(wide ? ['AFFINITY', 'POLICY(EXT/INT)'] : [])]];
  for (const s of services) {
    const ext = [...(s.externalIPs ?? []), ...(s.loadBalancerIPs ?? [])];
    const ports = s.ports.map((p) => `${p.port}${p.nodePort ? ':' + p.nodePort : ''}/${p.protocol}`).join(',');
    const eps = s.endpoints ?? [];
    const ready = eps.filter((e) => e.ready !== false).length;
    const row = [s.namespace, s.name, s.clusterIP ?? 'None', ext.length ? ext.join(',') : '<none>', ports, eps.length === ready ? String(eps.length) : `${ready}/${eps.length} ready`];
    if (wide) row.push(s.sessionAffinity === 'ClientIP' ? `ClientIP ${s.sessionAffinityTimeoutSeconds ?? 10800}s` : 'None', `${s.externalTrafficPolicy ?? 'Cluster'}/${s.internalTrafficPolicy ?? 'Cluster'}`);
    rows.push(row);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('   ')).join('\n') + '\n';
}

export function registerGet(program: Command): void {
  const get = program.command('get').description('show what the running tunproxy has in force');
  const ruleset = get
    .command('ruleset')
    .description('the rule set in force (GET /v1/ruleset); its generation on stderr')
    .addOption(outputOption(['json', 'yaml'], 'json'));
  addClientOptions(ruleset).action(async (f: GetFlags) => {
    const client = clientFrom(f);
    try {
      const r = await client.call<RuleSet>('GET', '/v1/ruleset');
      print(r.body, f.output);
      err(`generation ${String(r.headers.etag ?? '').replace(/"/g, '')}`);
      process.exitCode = EXIT_OK;
    } catch (e) {
      if (!(e instanceof ApiRequestError)) throw e;
      reportApiError(e);
      process.exitCode = EXIT_ERROR;
    }
  });
  const services = get
    .command('services')
    .alias('service')
    .alias('svc')
    .argument('[namespace/name]', 'one service')
    .description('the services in force (a table, or the service objects with -o json|yaml)')
    .option('-n, --namespace <ns>', 'only this namespace')
    .addOption(outputOption(['table', 'wide', 'json', 'yaml'], 'table'));
  addClientOptions(services).action(async (which: string | undefined, f: GetFlags) => {
    const client = clientFrom(f);
    let list: Service[];
    try {
      if (which !== undefined) {
        const m = /^([^/\s]+)\/([^/\s]+)$/.exec(which);
        if (!m) {
          err(`tunproxy: ${which}: expected NAMESPACE/NAME`);
          process.exitCode = EXIT_USAGE;
          return;
        }
        const r = await client.call<Service>('GET', `/v1/services/${encodeURIComponent(m[1])}/${encodeURIComponent(m[2])}`);
        list = [r.body];
      } else {
        const r = await client.call<{ services: Service[] }>('GET', '/v1/services', { query: { namespace: f.namespace } });
        list = r.body.services;
      }
    } catch (e) {
      if (!(e instanceof ApiRequestError)) throw e;
      reportApiError(e);
      process.exitCode = EXIT_ERROR;
      return;
    }
    if (f.output === 'table' || f.output === 'wide') process.stdout.write(servicesTable(list, f.output === 'wide'));
    else print(which !== undefined ? list[0] : list, f.output);
    process.exitCode = EXIT_OK;
  });
}
