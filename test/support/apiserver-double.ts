/**
 * A Kubernetes API server double for the tests and the kube benchmark: the
 * real client library (@kubernetes/client-node) talks to it over HTTP as to
 * kube-apiserver, for Services (v1), EndpointSlices (discovery.k8s.io/v1)
 * and Nodes (v1). It implements the parts of the API a list-and-watch client
 * depends on, the way the real server does them:
 *
 * - one resource-version counter for every write (etcd's revision): every
 *   object carries metadata.resourceVersion, uid, creationTimestamp, generation;
 * - list: all namespaces or one (/api/v1/namespaces/NS/services), with
 *   limit + continue (the token pins the list's resource version; a token
 *   older than the compacted history is 410 Expired), fieldSelector
 *   metadata.name / metadata.namespace, labelSelector (k=v, k!=v, k, !k);
 *   the list's metadata.resourceVersion is the revision it was read at;
 * - watch (?watch=true): a chunked HTTP response, one JSON event per line
 *   (ADDED, MODIFIED, DELETED with the object's last state, BOOKMARK with
 *   only kind, apiVersion and metadata.resourceVersion when the client sent
 *   allowWatchBookmarks=true, ERROR with a Status). Without resourceVersion
 *   (or "0") the watch starts with a synthetic ADDED per object; with one, it
 *   replays the history after it, then goes live. A resourceVersion older
 *   than the retained history gets an ERROR event with code 410 (reason
 *   Expired) and the stream ends, as kube-apiserver does (or, with
 *   `goneAsHttpStatus`, the HTTP status 410). timeoutSeconds ends the stream;
 *   objects that stop matching a label/field selector arrive as DELETED.
 * - failures: dropWatches() cuts every watch connection (no final chunk);
 *   restart() closes the listener and every connection and listens again on
 *   the same port, with a fresh watch cache (history before the restart is
 *   gone, as after a kube-apiserver restart: old resource versions get 410);
 *   compact() drops the history as etcd compaction does.
 * - a bearer token, when given, is required on every request (401 otherwise).
 *
 * Objects go in as a real cluster serves them (kubectl get -o json items):
 * apply() creates or replaces, remove() deletes.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

type Obj = Record<string, any>;

export interface ResourceDef {
  /** "services" */
  plural: string;
  kind: string;
  apiVersion: string;
  /** "/api/v1" or "/apis/discovery.k8s.io/v1" */
  prefix: string;
  namespaced: boolean;
}

export const RESOURCES: ResourceDef[] = [
  { plural: 'services', kind: 'Service', apiVersion: 'v1', prefix: '/api/v1', namespaced: true },
  { plural: 'endpointslices', kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', prefix: '/apis/discovery.k8s.io/v1', namespaced: true },
  { plural: 'nodes', kind: 'Node', apiVersion: 'v1', prefix: '/api/v1', namespaced: false },
];

interface Event {
  rv: number;
  res: ResourceDef;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: Obj;
  /** the object's state before (MODIFIED), for selectors */
  prev: Obj | null;
}

interface Watcher {
  res: ResourceDef;
  ns: string | null;
  match: (o: Obj) => boolean;
  bookmarks: boolean;
  res_: ServerResponse;
  socket: Socket;
  /** newest rv sent on this stream (event or bookmark) */
  sentRv: number;
  timers: NodeJS.Timeout[];
}

export interface ApiServerDoubleOptions {
  /** 127.0.0.1 unless told (a test namespace's address) */
  host?: string;
  port?: number;
  token?: string;
  /** BOOKMARK every this many ms on watches that asked for them (default 1000; 0: none) */
  bookmarkIntervalMs?: number;
  /** answer a too-old watch resourceVersion with HTTP 410 instead of a 200 stream with an ERROR event */
  goneAsHttpStatus?: boolean;
  /** events kept for watches to resume from (default 100 000; older ones are compacted) */
  historyLimit?: number;
}

export interface RequestLog {
  method: string;
  path: string;
  query: Record<string, string>;
  status: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function status(code: number, reason: string, message: string): Obj {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

/** labelSelector: comma-separated k=v, k==v, k!=v, k, !k */
export function labelMatcher(sel: string | undefined): (o: Obj) => boolean {
  if (!sel) return () => true;
  const terms = sel.split(',').map((t) => t.trim()).filter(Boolean).map((t) => {
    let m: RegExpExecArray | null;
    if ((m = /^([^!=]+)!=(.*)$/.exec(t))) return (l: Obj) => l[m![1]] !== m![2];
    if ((m = /^([^!=]+)==?(.*)$/.exec(t))) return (l: Obj) => l[m![1]] === m![2];
    if ((m = /^!(.+)$/.exec(t))) return (l: Obj) => !(m![1] in l);
    return (l: Obj) => t in l;
  });
  return (o) => {
    const l = o.metadata?.labels ?? {};
    return terms.every((f) => f(l));
  };
}

/** fieldSelector: metadata.name and metadata.namespace, = / == / != */
export function fieldMatcher(sel: string | undefined): (o: Obj) => boolean {
  if (!sel) return () => true;
  const terms = sel.split(',').map((t) => {
    const m = /^(metadata\.name|metadata\.namespace)(!=|==|=)(.*)$/.exec(t.trim());
    if (!m) throw Object.assign(new Error(`field label not supported: ${t}`), { code: 400 });
    const get = (o: Obj) => (m[1] === 'metadata.name' ? o.metadata?.name : o.metadata?.namespace ?? '');
    return m[2] === '!=' ? (o: Obj) => get(o) !== m[3] : (o: Obj) => get(o) === m[3];
  });
  return (o) => terms.every((f) => f(o));
}

export class ApiServerDouble {
  private server: Server | null = null;
  private sockets = new Set<Socket>();
  private watchers = new Set<Watcher>();
  /** plural → "ns/name" → object */
  private store = new Map<string, Map<string, Obj>>();
  private history: Event[] = [];
  /** watches from a resourceVersion below this get 410 */
  private oldestRv = 1;
  rv = 1;
  host: string;
  port: number;
  readonly requests: RequestLog[] = [];
  /** watch requests served (to see reconnections) */
  watchRequests = 0;
  listRequests = 0;
  private readonly o: Required<Omit<ApiServerDoubleOptions, 'host' | 'port' | 'token'>> & { token?: string };

  constructor(opts: ApiServerDoubleOptions = {}) {
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? 0;
    this.o = { bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 1000, goneAsHttpStatus: opts.goneAsHttpStatus ?? false, historyLimit: opts.historyLimit ?? 100_000, token: opts.token };
    for (const r of RESOURCES) this.store.set(r.plural, new Map());
  }

  get url(): string {
    return `http://${this.host}:${this.port}`;
  }

  /** A kubeconfig (YAML is JSON) pointing at this server. */
  kubeconfig(): string {
    return JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'double', cluster: { server: this.url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'agent', user: this.o.token ? { token: this.o.token } : {} }],
      contexts: [{ name: 'double', context: { cluster: 'double', user: 'agent' } }],
      'current-context': 'double',
    });
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res));
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /** Close the listener and every connection (watches end without their last chunk). */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    for (const w of this.watchers) for (const t of w.timers) clearTimeout(t);
    this.watchers.clear();
    for (const sock of this.sockets) sock.destroy();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  /** A restart: down for `downMs`, back on the same port with the same objects and a fresh watch cache. */
  async restart(downMs = 200): Promise<void> {
    await this.stop();
    await sleep(downMs);
    this.compact();
    await this.start();
  }

  /** Cut every watch connection abruptly (the TCP connection is destroyed mid-stream). */
  dropWatches(): number {
    const n = this.watchers.size;
    for (const w of [...this.watchers]) {
      this.endWatch(w);
      w.socket.destroy();
    }
    return n;
  }

  /** Forget the history (etcd compaction): a watch must resume from now on, or get 410. */
  compact(): void {
    this.history = [];
    this.oldestRv = this.rv;
  }

  get(plural: string, ns: string, name: string): Obj | undefined {
    return this.store.get(plural)?.get(`${ns}/${name}`);
  }

  list(plural: string): Obj[] {
    return [...(this.store.get(plural)?.values() ?? [])];
  }

  private resOf(o: Obj): ResourceDef {
    const r = RESOURCES.find((x) => x.kind === o.kind);
    if (!r) throw new Error(`the API server double serves Service, EndpointSlice and Node, not ${JSON.stringify(o.kind)}`);
    return r;
  }

  /** Create or replace objects (as kubectl apply would); each write gets its own resource version. */
  apply(...objects: Obj[]): number {
    for (const input of objects) {
      const res = this.resOf(input);
      const o: Obj = structuredClone(input);
      o.apiVersion = res.apiVersion;
      const meta = (o.metadata ??= {});
      if (!meta.name) throw new Error(`${res.kind} without metadata.name`);
      if (res.namespaced) meta.namespace ??= 'default';
      else delete meta.namespace;
      const key = `${meta.namespace ?? ''}/${meta.name}`;
      const prev = this.store.get(res.plural)!.get(key) ?? null;
      meta.uid = prev?.metadata.uid ?? meta.uid ?? randomUUID();
      meta.creationTimestamp = prev?.metadata.creationTimestamp ?? meta.creationTimestamp ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z');
      meta.generation = (prev?.metadata.generation ?? 0) + 1;
      meta.resourceVersion = String(++this.rv);
      this.store.get(res.plural)!.set(key, o);
      this.emit({ rv: this.rv, res, type: prev ? 'MODIFIED' : 'ADDED', object: o, prev });
    }
    return this.rv;
  }

  /** Delete objects by kind, namespace and name. */
  remove(...refs: Array<{ kind: string; namespace?: string; name: string }>): number {
    for (const ref of refs) {
      const res = this.resOf(ref);
      const key = `${res.namespaced ? ref.namespace ?? 'default' : ''}/${ref.name}`;
      const prev = this.store.get(res.plural)!.get(key);
      if (!prev) continue;
      this.store.get(res.plural)!.delete(key);
      const o = structuredClone(prev);
      o.metadata.resourceVersion = String(++this.rv);
      this.emit({ rv: this.rv, res, type: 'DELETED', object: o, prev });
    }
    return this.rv;
  }

  private emit(e: Event): void {
    this.history.push(e);
    if (this.history.length > this.o.historyLimit) {
      const cut = this.history.length - this.o.historyLimit;
      this.oldestRv = this.history[cut - 1].rv;
      this.history.splice(0, cut);
    }
    for (const w of this.watchers) this.deliver(w, e);
  }

  /** An event as this watcher sees it: selectors turn entering/leaving into ADDED/DELETED. */
  private deliver(w: Watcher, e: Event): void {
    if (e.res !== w.res || e.rv <= w.sentRv) return;
    const inNs = (o: Obj | null) => o !== null && (w.ns === null || o.metadata?.namespace === w.ns) && w.match(o);
    const now = e.type !== 'DELETED' && inNs(e.object);
    const before = e.type === 'ADDED' ? false : inNs(e.prev);
    let type: string | null = null;
    if (e.type === 'ADDED') type = now ? 'ADDED' : null;
    else if (e.type === 'DELETED') type = before ? 'DELETED' : null;
    else if (now && before) type = 'MODIFIED';
    else if (now) type = 'ADDED';
    else if (before) type = 'DELETED';
    w.sentRv = e.rv;
    if (type !== null) this.write(w, { type, object: e.object });
  }

  private write(w: Watcher, ev: Obj): void {
    if (!w.res_.writableEnded) w.res_.write(JSON.stringify(ev) + '\n');
  }

  private endWatch(w: Watcher): void {
    for (const t of w.timers) clearTimeout(t);
    this.watchers.delete(w);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://double');
    const query = Object.fromEntries(url.searchParams);
    const send = (code: number, body: Obj) => {
      this.requests.push({ method: req.method ?? '', path: url.pathname, query, status: code });
      const text = JSON.stringify(body);
      res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    };
    if (this.o.token && req.headers.authorization !== `Bearer ${this.o.token}`) return send(401, status(401, 'Unauthorized', 'Unauthorized'));
    if (req.method !== 'GET') return send(405, status(405, 'MethodNotAllowed', `the double serves GET only (list and watch)`));
    // /api/v1[/namespaces/NS]/PLURAL, /apis/discovery.k8s.io/v1[/namespaces/NS]/PLURAL
    const m = /^(\/api\/v1|\/apis\/discovery\.k8s\.io\/v1)(?:\/namespaces\/([^/]+))?\/([a-z]+)$/.exec(url.pathname);
    const def = m ? RESOURCES.find((r) => r.prefix === m[1] && r.plural === m[3]) : undefined;
    if (!m || !def || (m[2] && !def.namespaced)) return send(404, status(404, 'NotFound', `the server could not find the requested resource (${url.pathname})`));
    const ns = m[2] ?? null;
    let match: (o: Obj) => boolean;
    try {
      const lm = labelMatcher(query.labelSelector);
      const fm = fieldMatcher(query.fieldSelector);
      match = (o) => lm(o) && fm(o);
    } catch (e) {
      return send(400, status(400, 'BadRequest', (e as Error).message));
    }
    const inScope = (o: Obj) => (ns === null || o.metadata?.namespace === ns) && match(o);
    if (query.watch === 'true' || query.watch === '1') return this.watch(req, res, def, ns, match, query);

    // list
    this.listRequests++;
    const limit = query.limit ? Number(query.limit) : 0;
    let atRv = this.rv;
    let offset = 0;
    if (query.continue) {
      let tok: { rv: number; offset: number };
      try {
        tok = JSON.parse(Buffer.from(query.continue, 'base64').toString());
      } catch {
        return send(400, status(400, 'BadRequest', 'continue parameter is not valid'));
      }
      if (tok.rv < this.oldestRv) return send(410, status(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.'));
      atRv = tok.rv;
      offset = tok.offset;
    }
    // the objects as of atRv: today's, with the writes after atRv undone from the history
    const view = new Map<string, Obj>();
    for (const [k, o] of this.store.get(def.plural)!) view.set(k, o);
    for (let i = this.history.length - 1; i >= 0 && this.history[i].rv > atRv; i--) {
      const e = this.history[i];
      if (e.res !== def) continue;
      const k = `${e.object.metadata.namespace ?? ''}/${e.object.metadata.name}`;
      if (e.prev) view.set(k, e.prev);
      else view.delete(k);
    }
    const all = [...view.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([, o]) => o).filter(inScope);
    const page = limit > 0 ? all.slice(offset, offset + limit) : all.slice(offset);
    const more = limit > 0 && offset + limit < all.length;
    const metadata: Obj = { resourceVersion: String(atRv) };
    if (more) {
      metadata.continue = Buffer.from(JSON.stringify({ rv: atRv, offset: offset + limit })).toString('base64');
      metadata.remainingItemCount = all.length - offset - limit;
    }
    // list items carry no kind/apiVersion, as kube-apiserver serves them
    const items = page.map(({ kind: _k, apiVersion: _a, ...rest }) => rest);
    send(200, { kind: `${def.kind}List`, apiVersion: def.apiVersion, metadata, items });
  }

  private watch(req: IncomingMessage, res: ServerResponse, def: ResourceDef, ns: string | null, match: (o: Obj) => boolean, query: Record<string, string>): void {
    this.watchRequests++;
    const rvText = query.resourceVersion ?? '';
    const from = rvText === '' || rvText === '0' ? null : Number(rvText);
    const log = (code: number) => this.requests.push({ method: 'GET', path: req.url ?? '', query, status: code });
    if (from !== null && (!Number.isInteger(from) || from < 0)) {
      log(400);
      const body = JSON.stringify(status(400, 'BadRequest', `invalid resource version: ${rvText}`));
      res.writeHead(400, { 'Content-Type': 'application/json' });
      return void res.end(body);
    }
    const expired = from !== null && from < this.oldestRv;
    if (expired && this.o.goneAsHttpStatus) {
      log(410);
      const body = JSON.stringify(status(410, 'Expired', `too old resource version: ${from} (${this.oldestRv})`));
      res.writeHead(410, { 'Content-Type': 'application/json' });
      return void res.end(body);
    }
    log(200);
    // chunked: no Content-Length; every event is flushed as it is written
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    if (expired) {
      res.write(JSON.stringify({ type: 'ERROR', object: status(410, 'Expired', `too old resource version: ${from} (${this.oldestRv})`) }) + '\n');
      return void res.end();
    }
    const w: Watcher = { res: def, ns, match, bookmarks: query.allowWatchBookmarks === 'true', res_: res, socket: req.socket, sentRv: 0, timers: [] };
    const inScope = (o: Obj) => (ns === null || o.metadata?.namespace === ns) && match(o);
    if (from === null) {
      // start with the current state as ADDED events
      for (const o of this.store.get(def.plural)!.values()) if (inScope(o)) this.write(w, { type: 'ADDED', object: o });
      w.sentRv = this.rv;
    } else {
      w.sentRv = from;
      for (const e of this.history) if (e.rv > from) this.deliver(w, e);
      w.sentRv = Math.max(w.sentRv, this.rv);
    }
    this.watchers.add(w);
    const timeout = Number(query.timeoutSeconds);
    if (timeout > 0) w.timers.push(setTimeout(() => {
      this.endWatch(w);
      res.end();
    }, timeout * 1000));
    if (w.bookmarks && this.o.bookmarkIntervalMs > 0) {
      const tick = () => {
        if (!this.watchers.has(w)) return;
        w.sentRv = Math.max(w.sentRv, this.rv);
        this.write(w, { type: 'BOOKMARK', object: { kind: def.kind, apiVersion: def.apiVersion, metadata: { resourceVersion: String(w.sentRv) } } });
        w.timers.push(setTimeout(tick, this.o.bookmarkIntervalMs));
      };
      w.timers.push(setTimeout(tick, this.o.bookmarkIntervalMs));
    }
    const gone = () => this.endWatch(w);
    res.on('close', gone);
    req.on('close', gone);
  }
}
