/**
 * `tunproxy conntrack [-L] [-D] [filters]`: the running tunproxy's connection
 * table, listed as `conntrack -L` does (or JSON), or flows deleted
 * (GET / DELETE /v1/conntrack). The count goes to stderr, as conntrack's.
 * Addresses of either family: an IPv6 one ([addr]:port with a port) selects
 * IPv6 flows only, an IPv4 one IPv4 flows only.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { ApiRequestError } from '../client.ts';
import { EXIT_ERROR, EXIT_OK, EXIT_USAGE, addClientOptions, clientFrom, err, outputOption, print, reportApiError } from './common.ts';
import type { ClientFlags } from './common.ts';

interface ConntrackFlags extends ClientFlags {
  list?: boolean;
  delete?: boolean;
  proto?: string;
  family?: string;
  src?: string;
  dst?: string;
  sport?: string;
  dport?: string;
  address?: string;
  port?: string;
  service?: string;
  endpoint?: string;
  all?: boolean;
  counters?: boolean;
  limit?: string;
  output: string;
}

export function registerConntrack(program: Command): void {
  const cmd = program
    .command('conntrack')
    .description("list (-L, the default) or delete (-D) flows of the running tunproxy's connection table")
    .option('-L, --list', 'list flows (conntrack -L format, or -o json)')
    .option('-D, --delete', 'delete the flows the filters select')
    .addOption(new Option('-p, --proto <protocol>', 'tcp, udp, sctp, icmp (IPv4) or icmpv6 (IPv6)'))
    .addOption(new Option('-f, --family <family>', 'the flows of one family (default both)').choices(['ipv4', 'ipv6']))
    .option('-s, --src <address>', "original direction's source address (IPv4 or IPv6)")
    .option('-d, --dst <address>', "original direction's destination address (IPv4 or IPv6)")
    .option('--sport <port>', "original direction's source port")
    .option('--dport <port>', "original direction's destination port")
    .option('--address <address>', 'any address of the flow, either direction')
    .option('--port <port>', 'any port of the flow, either direction')
    .option('--service <name>', 'a service ("ns/name") or service port ("ns/name:port")')
    .option('--endpoint <address[:port]>', 'the endpoint (the reply direction\'s source): 10.64.1.7[:8080], fd00::7 or [fd00::7]:8080')
    .option('--all', 'with -D and no filter: delete every flow')
    .option('--counters', 'show packets= bytes= (as with nf_conntrack_acct=1)')
    .option('--limit <n>', 'list at most this many flows')
    .addOption(outputOption(['text', 'json'], 'text'));
  addClientOptions(cmd)
    .addHelpText('after', `
An address is IPv4 or IPv6; a filter on an address matches flows of that family only.

Examples:
  tunproxy conntrack -L -p udp --dport 53
  tunproxy conntrack -D --endpoint 10.64.1.7
  tunproxy conntrack -L -f ipv6
  tunproxy conntrack -L -d fd00:10:96::a
  tunproxy conntrack -D --endpoint '[fd00:10:64:1::7]:8080'`)
    .action(async (f: ConntrackFlags) => {
      if (f.list && f.delete) {
        err('tunproxy conntrack: -L and -D: give one of them');
        process.exitCode = EXIT_USAGE;
        return;
      }
      const query: Record<string, string | undefined> = {
        protocol: f.proto,
        family: f.family,
        src: f.src,
        dst: f.dst,
        sport: f.sport,
        dport: f.dport,
        address: f.address,
        port: f.port,
        service: f.service,
        endpoint: f.endpoint,
      };
      const client = clientFrom(f);
      try {
        if (f.delete) {
          if (f.all) query.all = 'true';
          const r = await client.call<{ deleted: number }>('DELETE', '/v1/conntrack', { query });
          err(`conntrack (tunproxy): ${r.body.deleted} flow entries have been deleted.`);
        } else {
          query.limit = f.limit;
          if (f.counters) query.counters = 'true';
          query.format = f.output;
          let count: unknown;
          if (f.output === 'text') {
            // streamed: a listing of a million flows is written as it comes, never held whole
            let waiting: Promise<void> = Promise.resolve();
            const h = await client.stream('GET', '/v1/conntrack', { query, headers: { accept: 'text/plain' } }, (c) => {
              if (!process.stdout.write(c)) waiting = new Promise((r) => process.stdout.once('drain', () => r()));
            });
            await waiting;
            count = h['x-flow-count'];
          } else {
            const r = await client.call<unknown>('GET', '/v1/conntrack', { query, headers: { accept: 'application/json' } });
            print(r.body, 'json');
            count = r.headers['x-flow-count'];
          }
          err(`conntrack (tunproxy): ${count} flow entries have been shown.`);
        }
        process.exitCode = EXIT_OK;
      } catch (e) {
        if (!(e instanceof ApiRequestError)) throw e;
        reportApiError(e);
        process.exitCode = EXIT_ERROR;
      }
    });
}
