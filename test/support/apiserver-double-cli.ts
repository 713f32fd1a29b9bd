/**
 * The API server double as a process of its own (inside a lab namespace for
 * the e2e tests, or beside the agent in the kube benchmark), driven by JSON
 * lines on stdin, one JSON answer per line on stdout:
 *   → {"id":1,"op":"apply","objects":[...]}        ← {"id":1,"ok":true,"result":{"rv":12}}
 *   ops: apply {objects}, remove {refs: [{kind, namespace, name}]}, drop, compact,
 *        restart {downMs}, stats, churn {slices?, perSecond, seconds, base?} (the benchmark's load), exit
 * Prints {"id":0,"ok":true,"result":{"url":...,"kubeconfig":...}} once listening.
 *
 *   node --import tsx test/support/apiserver-double-cli.ts [--host 127.0.0.1] [--port 0] [--token T] [--bookmark-ms 1000]
 */
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';
import { ApiServerDouble } from './apiserver-double.ts';

type Json = Record<string, any>;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : def;
}

const api = new ApiServerDouble({
  host: arg('--host', '127.0.0.1'),
  port: Number(arg('--port', '0')),
  token: process.argv.includes('--token') ? arg('--token', '') : undefined,
  bookmarkIntervalMs: Number(arg('--bookmark-ms', '1000')),
  goneAsHttpStatus: process.argv.includes('--gone-as-http-status'),
});

const out = (m: Json) => process.stdout.write(JSON.stringify(m) + '\n');

/**
 * The benchmark's load: `perSecond` EndpointSlice changes a second for `seconds`, round robin
 * over the given slices (default: every slice in the store); each change moves one endpoint to a new address and stamps
 * endpoints.kubernetes.io/last-change-trigger-time (as the EndpointSlice controller does) and
 * tunproxy.dev/sent-at-ms (performance.timeOrigin + now, sub-millisecond) at the moment it is sent.
 */
async function churn(m: Json): Promise<Json> {
  const slices: Json[] = m.slices ?? api.list('endpointslices');
  const perSecond = Number(m.perSecond);
  const total = Math.round(perSecond * Number(m.seconds));
  const t0 = performance.now();
  let sent = 0;
  while (sent < total) {
    const due = t0 + (sent * 1000) / perSecond;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const s = structuredClone(slices[sent % slices.length]);
    const ep = s.endpoints[0];
    const n = Number(m.base ?? 0) + sent + 1;
    ep.addresses = [`10.${128 + ((n >> 16) & 63)}.${(n >> 8) & 255}.${n & 255}`];
    const now = performance.timeOrigin + performance.now();
    s.metadata.annotations = { ...(s.metadata.annotations ?? {}), 'endpoints.kubernetes.io/last-change-trigger-time': new Date(now).toISOString(), 'tunproxy.dev/sent-at-ms': String(now) };
    api.apply(s);
    sent++;
  }
  return { sent, seconds: (performance.now() - t0) / 1000 };
}

async function handle(m: Json): Promise<unknown> {
  switch (m.op) {
    case 'apply':
      return { rv: api.apply(...m.objects) };
    case 'remove':
      return { rv: api.remove(...m.refs) };
    case 'drop':
      return { dropped: api.dropWatches() };
    case 'compact':
      api.compact();
      return { rv: api.rv };
    case 'restart':
      await api.restart(Number(m.downMs ?? 200));
      return { rv: api.rv };
    case 'stats':
      return { rv: api.rv, watchRequests: api.watchRequests, listRequests: api.listRequests, statuses: api.requests.map((r) => r.status) };
    case 'churn':
      return churn(m);
    case 'exit':
      await api.stop();
      setImmediate(() => process.exit(0));
      return { bye: true };
    default:
      throw new Error(`unknown op ${JSON.stringify(m.op)}`);
  }
}

await api.start();
out({ id: 0, ok: true, result: { url: api.url, kubeconfig: api.kubeconfig() } });
createInterface({ input: process.stdin }).on('line', (line) => {
  let m: Json;
  try {
    m = JSON.parse(line);
  } catch {
    return out({ id: -1, ok: false, error: { message: `not JSON: ${line}` } });
  }
  handle(m).then(
    (result) => out({ id: m.id, ok: true, result }),
    (e: Error) => out({ id: m.id, ok: false, error: { message: e.message } }),
  );
});
process.stdin.on('end', () => void api.stop().then(() => process.exit(0)));
process.on('SIGTERM', () => void api.stop().then(() => process.exit(0)));
