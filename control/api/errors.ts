/**
 * Every error the API answers is JSON of one shape:
 *
 *   {"error": "rule_set_rejected", "message": "what is wrong and what to do",
 *    "errors": [{"path": "services[3].ports[0].nodePort", "message": "70000 is outside 30000-32767"}],
 *    ...fields particular to the error (generation, limit)}
 *
 * `error` is a stable code for scripts; `message` is for a person.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ValidationError } from '../validate.ts';

export interface ErrorBody {
  error: string;
  message: string;
  errors?: ValidationError[];
  [k: string]: unknown;
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly errors?: ValidationError[];
  readonly extra: Record<string, unknown>;
  readonly headers: Record<string, string>;
  constructor(status: number, code: string, message: string, o: { errors?: ValidationError[]; extra?: Record<string, unknown>; headers?: Record<string, string> } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.errors = o.errors;
    this.extra = o.extra ?? {};
    this.headers = o.headers ?? {};
  }
  body(): ErrorBody {
    const b: ErrorBody = { error: this.code, message: this.message, ...this.extra };
    if (this.errors) b.errors = this.errors;
    return b;
  }
}

/** ajv's instancePath "/services/3/ports/0" → the validator's "services[3].ports[0]" */
export function jsonPointerToPath(pointer: string, prefix = ''): string {
  let out = prefix;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(seg)) out += `[${seg}]`;
    else out += out === '' ? seg : `.${seg}`;
  }
  return out === '' ? '(root)' : out;
}

interface AjvError {
  instancePath: string;
  keyword: string;
  message?: string;
  params?: Record<string, unknown>;
}

/** ajv errors as {path, message} a person can act on. */
export function ajvErrors(list: readonly AjvError[] | undefined, prefix = ''): ValidationError[] {
  return (list ?? []).map((e) => {
    let path = jsonPointerToPath(e.instancePath, prefix);
    let message = e.message ?? e.keyword;
    if (e.keyword === 'additionalProperties' && e.params?.additionalProperty !== undefined) {
      path = path === '(root)' ? String(e.params.additionalProperty) : `${path}.${e.params.additionalProperty}`;
      message = 'unknown field';
    } else if (e.keyword === 'required' && e.params?.missingProperty !== undefined) {
      path = path === '(root)' ? String(e.params.missingProperty) : `${path}.${e.params.missingProperty}`;
      message = 'is required';
    } else if (e.keyword === 'enum' && Array.isArray(e.params?.allowedValues)) {
      message = `must be one of ${(e.params!.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    }
    return { path, message };
  });
}

const prefixOfContext: Record<string, string> = { body: '', querystring: 'query', params: 'url', headers: 'header' };

export function sendError(reply: FastifyReply, e: ApiError): FastifyReply {
  for (const [k, v] of Object.entries(e.headers)) reply.header(k, v);
  return reply.code(e.status).type('application/json; charset=utf-8').send(e.body());
}

/** Fastify's and the content parsers' errors, and any other throw, as JSON with an actionable message. */
export function installErrorHandlers(app: FastifyInstance, limits: { bodyLimit: number }): void {
  app.setErrorHandler((err: FastifyError & { validationContext?: string; validation?: AjvError[] }, req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof ApiError) return sendError(reply, err);
    if (err.validation) {
      const where = err.validationContext ?? 'body';
      const errors = ajvErrors(err.validation, where === 'body' ? '' : prefixOfContext[where] ?? where);
      const what = where === 'querystring' ? 'query parameters' : where === 'params' ? 'URL' : where;
      return sendError(reply, new ApiError(400, 'invalid_request', `the request's ${what} ${errors.length === 1 ? 'has an error' : `has ${errors.length} errors`}: ${errors.map((x) => `${x.path}: ${x.message}`).join('; ')}`, { errors }));
    }
    switch (err.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE': {
        const limit = req.routeOptions.bodyLimit ?? limits.bodyLimit;
        return sendError(reply, new ApiError(413, 'body_too_large', `the body is larger than this route accepts (${limit} bytes); send less, or start tunproxy with a larger --max-body`, { extra: { limit } }));
      }
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return sendError(reply, new ApiError(415, 'unsupported_media_type', `content-type ${JSON.stringify(req.headers['content-type'] ?? '')} is not accepted here: send application/json${req.url.startsWith('/v1/import/iptables') ? ' or text/plain' : req.url.startsWith('/v1/import/kubernetes') || req.url.startsWith('/v1/ruleset') ? ' or application/yaml' : ''}`));
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return sendError(reply, new ApiError(400, 'empty_body', 'the body is empty: send a JSON document'));
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return sendError(reply, new ApiError(400, 'bad_content_length', 'the content-length header does not match the body sent'));
      case 'FST_ERR_CTP_INVALID_JSON_BODY':
        return sendError(reply, new ApiError(400, 'invalid_json', `the body is not valid JSON: ${err.message}`));
    }
    if (err instanceof SyntaxError) return sendError(reply, new ApiError(400, 'invalid_json', `the body is not valid JSON: ${err.message}`));
    const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) req.log.error({ err }, 'internal error');
    return sendError(reply, new ApiError(status, status === 500 ? 'internal' : 'bad_request', status === 500 ? `internal error: ${err.message} (the rule set in force is unchanged unless the answer said otherwise; please report this)` : err.message));
  });
  app.setNotFoundHandler((req: FastifyRequest, reply: FastifyReply) => {
    sendError(reply, new ApiError(404, 'no_such_route', `no route ${req.method} ${req.url.split('?')[0]}: GET /v1 lists the routes`));
  });
}
