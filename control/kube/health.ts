/**
 * Health as kube-proxy serves it.
 *
 * - /healthz (and /livez) on --healthz-bind-address (0.0.0.0:10256 by
 *   default): 200 while the proxy rules are current, 503 when a change has
 *   been waiting longer than the health timeout without a sync, or before the
 *   first sync. The body is kube-proxy's: {"lastUpdated", "currentTime",
 *   "nodeEligible"}. /metrics serves the agent's Prometheus registry there
 *   too, for the DaemonSet's scrape.
 * - Health-check NodePorts: for every service with externalTrafficPolicy
 *   Local and a spec.healthCheckNodePort, an HTTP server on that port that
 *   answers 200 with the number of this node's ready endpoints, or 503 when
 *   there are none, so that cloud load balancers skip this node
 *   ({"service": {"namespace","name"}, "localEndpoints", "serviceProxyHealthy"}).
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface HealthState {
  /** when a change came in that no sync has put in force yet (0: none waiting) */
  queuedAt: number;
  /** when the last sync put rules in force (0: never) */
  updatedAt: number;
}

/** "0.0.0.0:10256", ":10256", "[::1]:10256" → host and port */
export function parseBindAddress(text: string, flag = '--healthz-bind-address'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`${flag} ${text}: expected HOST:PORT, like 0.0.0.0:10256`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'X-Content-Type-Options': 'nosniff', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function listen(server: Server, host: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}

export class HealthzServer {
  private server: Server | null = null;
  port = 0;

  constructor(
    private readonly state: HealthState,
    private readonly timeoutMs: number,
    private readonly registry: Registry | null,
    private readonly now: () => number = Date.now,
  ) {}

  /** kube-proxy's rule: healthy after the first sync, unless a change has waited longer than the timeout. */
  healthy(): boolean {
    const now = this.now();
    if (this.state.updatedAt === 0) return false;
    return this.state.queuedAt === 0 || now - this.state.queuedAt < this.timeoutMs;
  }

  async start(bind: string): Promise<number> {
    const { host, port } = parseBindAddress(bind);
    this.server = createServer((req, res) => void this.handle(req, res));
    this.port = await listen(this.server, host, port);
    return this.port;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz' || path === '/livez') {
      const ok = this.healthy();
      return json(res, ok ? 200 : 503, {
        lastUpdated: new Date(this.state.updatedAt).toISOString(),
        currentTime: new Date(this.now()).toISOString(),
        nodeEligible: true,
      });
    }
    if (path === '/metrics' && this.registry) {
      const text = await this.registry.metrics();
      res.writeHead(200, { 'Content-Type': this.registry.contentType });
      return void res.end(text);
    }
    json(res, 404, { error: `no route ${path}: /healthz, /livez, /metrics` });
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r())).then(() => s.closeAllConnections?.());
  }
}

/** The health-check NodePorts of the externalTrafficPolicy: Local services. */
export class HealthCheckNodePorts {
  /** port → its server and the service it reports on */
  private servers = new Map<number, { server: Server; key: string; ready: Promise<void> }>();
  /** "ns/name" → local ready endpoints */
  private local = new Map<string, number>();

  constructor(
    private readonly host: string,
    private readonly log: (msg: string) => void,
    private readonly proxyHealthy: () => boolean = () => true,
  ) {}

  get ports(): number[] {
    return [...this.servers.keys()].sort((a, b) => a - b);
  }

  /** Bring the listeners in line: `wanted` is service → healthCheckNodePort; `localEndpoints` service → count. */
  async update(wanted: Map<string, number>, localEndpoints: Map<string, number>): Promise<void> {
    this.local = localEndpoints;
    const byPort = new Map<number, string>();
    for (const [key, port] of wanted) byPort.set(port, key);
    for (const [port, s] of this.servers) {
      if (byPort.get(port) !== s.key) {
        this.servers.delete(port);
        s.server.close();
        s.server.closeAllConnections?.();
      }
    }
    const starting: Promise<void>[] = [];
    for (const [port, key] of byPort) {
      if (this.servers.has(port)) continue;
      const server = createServer((req, res) => {
        const n = this.local.get(key) ?? 0;
        const [namespace, name] = key.split('/');
        json(res, n > 0 ? 200 : 503, { service: { namespace, name }, localEndpoints: n, serviceProxyHealthy: this.proxyHealthy() });
      });
      const ready = listen(server, this.host, port).then(
        () => undefined,
        (e: Error) => {
          this.log(`health-check NodePort ${port} of ${key} cannot be served: ${e.message}`);
          this.servers.delete(port);
        },
      );
      this.servers.set(port, { server, key, ready });
      starting.push(ready);
    }
    await Promise.all(starting);
  }

  async close(): Promise<void> {
    const all = [...this.servers.values()];
    this.servers.clear();
    await Promise.all(all.map((s) => new Promise<void>((r) => {
      s.server.close(() => r());
      s.server.closeAllConnections?.();
    })));
  }
}
