/**
 * The control API inside the tunproxy process (fastify): a Unix socket
 * created 0600 by default (/run/tunproxy/<tun>.sock), and a TCP listener only
 * when asked for (--listen host:port), which then requires a bearer token on
 * every request (--token-file). The routes are in control/api/; see GET /v1.
 *
 * Request bodies are checked against JSON schemas (control/schema.ts for the
 * rule set) with unknown fields refused, nothing coerced and no defaults
 * injected; bodies have size limits; every error is JSON with a message a
 * person can act on (control/api/errors.ts).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { prepareSocketPath } from './socket-path.ts';
import Fastify from 'fastify';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { parse as parseYaml } from 'yaml';
import type { Dataplane } from './dataplane.ts';
import { ApiContext } from './api/context.ts';
import type { ContextOptions, ControlSide } from './api/context.ts';
import { ApiError, installErrorHandlers, sendError } from './api/errors.ts';
import { jsonErrorOffset, lineColumn } from './json-error.ts';
import { registerRuleSetRoutes } from './api/ruleset.ts';
import { registerImportRoutes } from './api/import.ts';
import { registerConntrackRoutes } from './api/conntrack.ts';
import { LinearCache, registerTraceRoutes } from './api/trace.ts';
import { ApiMetrics, registerObserveRoutes } from './api/observe.ts';
import { LazyValidators } from './api/lazy-validators.ts';

export { ApiContext } from './api/context.ts';

export const SMALL_BODY_LIMIT = 1024 * 1024;
// where the socket goes and the token file: in a module of their own, which the packet thread loads without fastify
export { DEFAULT_SOCKET_DIR, defaultSocketPath, readTokenFile } from './api/local.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** the JSON body as it came, on routes with config.keepJsonText (null otherwise, and for YAML bodies) */
    jsonText: string | null;
  }
}

export interface BuildOptions {
  /** when set, every request needs `Authorization: Bearer <token>` */
  token?: string;
  /** fastify's logger (default off) */
  logger?: boolean;
}

/** A route's config flag: `raw` (the body text, not parsed), `keepJsonText` (parsed, and its text kept in req.jsonText). */
function routeFlag(req: FastifyRequest, flag: 'raw' | 'keepJsonText'): boolean {
  return (req.routeOptions.config as Partial<Record<typeof flag, boolean>> | undefined)?.[flag] === true;
}

function installParsers(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(['application/json', 'application/merge-patch+json'], { parseAs: 'string' }, (req, body, done) => {
    const text = body as string;
    if (routeFlag(req, 'raw')) return done(null, text);
    if (text.trim() === '') return done(new ApiError(400, 'empty_body', 'the body is empty: send a JSON document'), undefined);
    try {
      const doc: unknown = JSON.parse(text);
      // PUT /v1/ruleset: the text is what the state directory saves when the document goes into force (no stringify)
      if (routeFlag(req, 'keepJsonText')) req.jsonText = text;
      done(null, doc);
    } catch (e) {
      const off = jsonErrorOffset(text);
      const where = off >= 0 ? ` (line ${lineColumn(text, off).line}, column ${lineColumn(text, off).column})` : '';
      done(new ApiError(400, 'invalid_json', `the body is not valid JSON${where}: ${(e as Error).message}; nothing changed`, { extra: off >= 0 ? { line: lineColumn(text, off).line, column: lineColumn(text, off).column } : {} }), undefined);
    }
  });
  app.addContentTypeParser(['application/yaml', 'application/x-yaml', 'text/yaml'], { parseAs: 'string' }, (req, body, done) => {
    const text = body as string;
    if (routeFlag(req, 'raw')) return done(null, text);
    try {
      done(null, parseYaml(text, { maxAliasCount: 100 }));
    } catch (e) {
      done(new ApiError(400, 'invalid_yaml', `the body is not valid YAML: ${(e as Error).message.split('\n')[0]}; nothing changed`), undefined);
    }
  });
  app.addContentTypeParser('text/plain', { parseAs: 'string' }, (_req, body, done) => done(null, body));
}

/** How long after the API listens its request schemas start compiling (lazy-validators.ts): after the start's last steps. */
const WARM_AFTER_MS = 1000;

/** A fastify instance serving every route on `ctx`. */
export function buildApi(ctx: ApiContext, metrics: ApiMetrics, cache: LinearCache, o: BuildOptions = {}): FastifyInstance {
  const validators = new LazyValidators();
  const app = Fastify({
    logger: o.logger ?? false,
    bodyLimit: SMALL_BODY_LIMIT,
    requestTimeout: 300_000,
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, useDefaults: false, coerceTypes: false, allErrors: false } },
    // request schemas compiled when first used, and all of them once the server listens (lazy-validators.ts)
    schemaController: { compilersFactory: { buildValidator: validators.buildValidator as never } },
  });
  app.addHook('onListen', async () => validators.warm(WARM_AFTER_MS));
  app.decorateRequest('jsonText', null);
  installParsers(app);
  installErrorHandlers(app, { bodyLimit: SMALL_BODY_LIMIT });
  if (o.token !== undefined) {
    const want = createHash('sha256').update(o.token).digest();
    app.addHook('onRequest', async (req, reply) => {
      const h = req.headers.authorization ?? '';
      const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
      const got = createHash('sha256').update(m ? m[1] : '').digest();
      if (m === null || !timingSafeEqual(want, got)) {
        reply.header('www-authenticate', 'Bearer realm="tunproxy"');
        return sendError(reply, new ApiError(401, 'unauthorized', m === null ? 'this listener needs Authorization: Bearer <token> (the token of tunproxy run --token-file)' : 'the bearer token is wrong: use the token in the file given to tunproxy run --token-file'));
      }
    });
  }
  // every refused change of the rules counts, whatever refused it (parser, schema, validator, If-Match)
  app.addHook('onResponse', async (req, reply) => {
    if (reply.statusCode < 400 || req.method === 'GET' || req.method === 'HEAD') return;
    const url = req.url;
    const changes = url.startsWith('/v1/ruleset') || url.startsWith('/v1/services') || (url.startsWith('/v1/import/') && /[?&]apply=(true|1)?(&|$)/.test(url));
    if (changes) ctx.rejections++;
  });
  registerObserveRoutes(app, ctx, metrics);
  registerRuleSetRoutes(app, ctx);
  registerImportRoutes(app, ctx);
  registerConntrackRoutes(app, ctx);
  registerTraceRoutes(app, ctx, cache);
  return app;
}

export interface ServerOptions extends ContextOptions {
  /** Unix socket path; null: none */
  socket?: string | null;
  /** permissions of the socket file (default 0600) */
  socketMode?: number;
  /** "host:port" of a TCP listener (requires token) */
  listen?: string;
  /** bearer token for the TCP listener */
  token?: string;
  logger?: boolean;
}

export interface ApiServer {
  readonly ctx: ApiContext;
  readonly metrics: ApiMetrics;
  readonly socketPath: string | null;
  /** the TCP listener's address, when there is one */
  readonly tcp: { host: string; port: number } | null;
  readonly apps: FastifyInstance[];
  close(): Promise<void>;
}

/** "127.0.0.1:9440", "[::1]:9440", ":9440" (all addresses) → host and port. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`--listen ${text}: expected HOST:PORT, like 127.0.0.1:9440`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** Start the API: the Unix socket, and the TCP listener when asked for. */
export async function startApi(dp: Dataplane | ControlSide, o: ServerOptions): Promise<ApiServer> {
  if (o.listen !== undefined && (o.token === undefined || o.token === '')) throw new Error('--listen needs --token-file: the TCP listener only serves requests with the bearer token');
  const ctx = new ApiContext(dp, o);
  const metrics = new ApiMetrics(ctx);
  const cache = new LinearCache();
  const apps: FastifyInstance[] = [];
  let socketPath: string | null = null;
  let tcp: { host: string; port: number } | null = null;
  const closeAll = async () => {
    for (const a of apps) await a.close().catch(() => {});
    if (socketPath !== null) rmSync(socketPath, { force: true });
    ctx.close();
  };
  try {
    if (o.socket) {
      const path = o.socket;
      const mode = o.socketMode ?? 0o600;
      await prepareSocketPath(path, mode, 'tunproxy');
      const app = buildApi(ctx, metrics, cache, { logger: o.logger });
      apps.push(app);
      // created where no one else can reach it (a fresh 0700 directory beside the path: process.umask
      // is not available in the control worker), set to the mode asked for, then renamed into place
      const hidden = mkdtempSync(join(dirname(path), '.tunproxy-sock-'));
      try {
        const tmp = join(hidden, 's');
        await app.listen({ path: tmp });
        chmodSync(tmp, mode);
        renameSync(tmp, path);
      } finally {
        rmSync(hidden, { recursive: true, force: true });
      }
      socketPath = path;
    }
    if (o.listen !== undefined) {
      const { host, port } = parseListen(o.listen);
      const app = buildApi(ctx, metrics, cache, { token: o.token, logger: o.logger });
      apps.push(app);
      await app.listen({ host, port });
      const addr = app.server.address();
      tcp = { host, port: typeof addr === 'object' && addr !== null ? addr.port : port };
    }
  } catch (e) {
    await closeAll();
    throw e;
  }
  return { ctx, metrics, socketPath, tcp, apps, close: closeAll };
}
