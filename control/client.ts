/**
 * The CLI's side of the API: HTTP over the Unix socket of a running tunproxy
 * (or over TCP with a bearer token). Errors that are not HTTP answers (no
 * socket, permission denied, refused) say what to check.
 */
import http from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const SOCKET_DIR = '/run/tunproxy';

export interface ClientOptions {
  /** Unix socket path */
  socket?: string;
  /** http://host:port of a TCP listener (instead of the socket) */
  url?: string;
  /** bearer token for the TCP listener */
  token?: string;
  /** per request (default 10 minutes: large rule sets take a while) */
  timeoutMs?: number;
}

export interface ApiResponse<T = unknown> {
  status: number;
  headers: IncomingHttpHeaders;
  /** the parsed JSON body, or the text when the answer is not JSON */
  body: T;
  text: string;
}

export interface RequestOptions {
  /** an object is sent as JSON; a string as is, with `contentType` (default text/plain) */
  body?: unknown;
  contentType?: string;
  headers?: Record<string, string>;
  query?: Record<string, string | number | boolean | undefined>;
}

/** An HTTP answer >= 400: `code` is the API's error code, `body` the JSON error. */
export class ApiRequestError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: { error?: string; message?: string; errors?: Array<{ path: string; message: string }>; [k: string]: unknown } | null;
  constructor(status: number, body: unknown, text: string) {
    const b = typeof body === 'object' && body !== null ? (body as ApiRequestError['body']) : null;
    super(b?.message ?? (text.trim() || `HTTP ${status}`));
    this.name = 'ApiRequestError';
    this.status = status;
    this.code = b?.error ?? `http_${status}`;
    this.body = b;
  }
}

/** The API could not be reached at all. */
export class ApiUnreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ApiUnreachable';
  }
}

/**
 * The socket to use: --socket, else $TUNPROXY_SOCKET, else the only socket
 * in /run/tunproxy, else /run/tunproxy/tun0.sock.
 */
export function resolveSocket(option?: string): string {
  if (option) return option;
  const env = process.env.TUNPROXY_SOCKET;
  if (env) return env;
  if (existsSync(SOCKET_DIR)) {
    try {
      const socks = readdirSync(SOCKET_DIR).filter((f) => f.endsWith('.sock'));
      if (socks.length === 1) return join(SOCKET_DIR, socks[0]);
      if (socks.length > 1) throw new ApiUnreachable(`several tunproxy sockets in ${SOCKET_DIR} (${socks.join(', ')}): choose one with --socket`);
    } catch (e) {
      if (e instanceof ApiUnreachable) throw e;
    }
  }
  return join(SOCKET_DIR, 'tun0.sock');
}

export class ApiClient {
  readonly socket: string | null;
  readonly url: URL | null;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(o: ClientOptions = {}) {
    this.url = o.url ? new URL(o.url) : null;
    if (this.url && this.url.protocol !== 'http:') throw new Error(`--server ${o.url}: only http://HOST:PORT is supported (the TCP listener of tunproxy run --listen)`);
    this.socket = this.url ? null : resolveSocket(o.socket);
    this.token = o.token;
    this.timeoutMs = o.timeoutMs ?? 600_000;
  }

  get where(): string {
    return this.url ? this.url.origin : this.socket!;
  }

  /**
   * One request whose successful answer is handed over chunk by chunk as it
   * arrives (a streamed listing: GET /v1/conntrack), never held whole; an
   * error answer is read whole and thrown as ApiRequestError. Resolves with
   * the headers and trailers.
   */
  async stream(method: string, path: string, o: RequestOptions, onData: (chunk: Buffer) => void): Promise<IncomingHttpHeaders> {
    const r = await this.request(method, path, { ...o, onResponse: (status) => (status < 400 ? onData : null) });
    if (r.status >= 400) throw new ApiRequestError(r.status, r.body, r.text);
    return r.headers;
  }

  /** One request; resolves with any HTTP answer (use `call` to throw on >= 400). */
  request<T = unknown>(method: string, path: string, o: RequestOptions & { onResponse?: (status: number) => ((c: Buffer) => void) | null | void } = {}): Promise<ApiResponse<T>> {
    let payload: Buffer | null = null;
    const headers: Record<string, string> = { accept: 'application/json', ...(o.headers ?? {}) };
    if (o.body !== undefined) {
      if (typeof o.body === 'string' || o.body instanceof Uint8Array) {
        payload = Buffer.isBuffer(o.body) ? o.body : typeof o.body === 'string' ? Buffer.from(o.body) : Buffer.from(o.body.buffer, o.body.byteOffset, o.body.byteLength);
        headers['content-type'] = o.contentType ?? 'text/plain';
      } else {
        payload = Buffer.from(JSON.stringify(o.body));
        headers['content-type'] = o.contentType ?? 'application/json';
      }
      headers['content-length'] = String(payload.length);
    }
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    let fullPath = path;
    if (o.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(o.query)) if (v !== undefined) q.set(k, String(v));
      const s = q.toString();
      if (s) fullPath += (path.includes('?') ? '&' : '?') + s;
    }
    const opts: http.RequestOptions = { method, path: fullPath, headers, timeout: this.timeoutMs };
    if (this.url) {
      opts.host = this.url.hostname.replace(/^\[|\]$/g, '');
      opts.port = Number(this.url.port || 80);
    } else opts.socketPath = this.socket!;
    return new Promise((resolve, reject) => {
      const req = http.request(opts, (res) => {
        const chunks: Buffer[] = [];
        const sink = o.onResponse?.(res.statusCode ?? 0) ?? null;
        res.on('data', (c: Buffer) => (sink ? sink(c) : chunks.push(c)));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          if (/application\/json/.test(String(res.headers['content-type'] ?? '')) && text !== '') {
            try {
              body = JSON.parse(text);
            } catch {
              body = text;
            }
          }
          // streamed answers (GET /v1/conntrack) send their counts as trailers
          resolve({ status: res.statusCode ?? 0, headers: { ...res.trailers, ...res.headers, ...res.trailers }, body: body as T, text });
        });
      });
      req.on('timeout', () => req.destroy(new ApiUnreachable(`no answer from ${this.where} within ${this.timeoutMs / 1000} s`)));
      req.on('error', (e: NodeJS.ErrnoException) => reject(this.explain(e)));
      if (payload) req.end(payload);
      else req.end();
    });
  }

  /** One request; throws ApiRequestError on an HTTP error answer. */
  async call<T = unknown>(method: string, path: string, o: RequestOptions = {}): Promise<ApiResponse<T>> {
    const r = await this.request<T>(method, path, o);
    if (r.status >= 400) throw new ApiRequestError(r.status, r.body, r.text);
    return r;
  }

  private explain(e: NodeJS.ErrnoException): Error {
    if (e instanceof ApiUnreachable) return e;
    const where = this.where;
    switch (e.code) {
      case 'ENOENT':
        return new ApiUnreachable(`no tunproxy API at ${where} (no such socket): is tunproxy run going? Choose the socket with --socket PATH`);
      case 'ECONNREFUSED':
        return new ApiUnreachable(`nothing answers at ${where} (connection refused): is tunproxy run going?`);
      case 'EACCES':
        return new ApiUnreachable(`permission denied on ${where}: the socket is readable by its owner only (0600); run as the user that runs tunproxy (e.g. with sudo)`);
      default:
        return new ApiUnreachable(`cannot reach the tunproxy API at ${where}: ${e.code ?? ''} ${e.message}`.trim());
    }
  }
}

/** The token in a --token-file for the client side (first line). */
export function readClientToken(path: string): string {
  try {
    return readFileSync(path, 'utf8').split('\n')[0].trim();
  } catch (e) {
    throw new Error(`--token-file ${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
