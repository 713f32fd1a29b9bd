/**
 * What the client commands share: the options that say where the API is
 * (--socket, or --server with --token-file), output formats, and turning an
 * API error into lines on stderr a person can act on.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { ApiClient, ApiRequestError, readClientToken } from '../client.ts';

// control/cli.ts's exit codes (it runs the program when imported, so they are repeated here)
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_PARTIAL = 3;

export interface ClientFlags {
  socket?: string;
  server?: string;
  tokenFile?: string;
  timeout?: string;
}

export function addClientOptions(cmd: Command): Command {
  return cmd
    .option('--socket <path>', 'Unix socket of the running tunproxy (default: $TUNPROXY_SOCKET, else the only socket in /run/tunproxy, else /run/tunproxy/tun0.sock)')
    .option('--server <url>', 'the TCP listener instead of the socket (http://HOST:PORT; needs --token-file)')
    .option('--token-file <file>', 'bearer token for --server')
    .option('--timeout <seconds>', 'give up waiting for an answer after this long', '600');
}

export function clientFrom(f: ClientFlags): ApiClient {
  const timeout = Number(f.timeout ?? 600);
  if (!Number.isFinite(timeout) || timeout <= 0) throw new Error(`--timeout: ${f.timeout} must be a number of seconds > 0`);
  if (f.server && f.socket) throw new Error('--server and --socket: give one of them');
  if (f.server && !f.tokenFile) throw new Error('--server needs --token-file (the TCP listener only serves requests with the bearer token)');
  return new ApiClient({
    socket: f.socket,
    url: f.server,
    token: f.tokenFile ? readClientToken(f.tokenFile) : undefined,
    timeoutMs: timeout * 1000,
  });
}

export function outputOption(formats: string[], def: string): Option {
  return new Option('-o, --output <format>', 'output format').choices(formats).default(def);
}

export function print(value: unknown, format: string): void {
  // yaml is loaded only when asked for (the command line starts faster without it)
  if (format === 'yaml') process.stdout.write((createRequire(import.meta.url)('yaml') as typeof import('yaml')).stringify(value));
  else process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function err(line: string): void {
  process.stderr.write(line + '\n');
}

/** An API error answer on stderr: its message, then each error with its path. */
export function reportApiError(e: ApiRequestError): void {
  err(`tunproxy: ${e.message}`);
  for (const x of e.body?.errors ?? []) err(`  ${x.path}: ${x.message}`);
}

/** Read a file, or stdin for "-". */
export function readInput(file: string): string {
  try {
    return readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file === '-' ? 'stdin' : file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** "12", "\"12\"" → the If-Match header value */
export function ifMatchHeader(v: string | undefined): Record<string, string> {
  if (v === undefined) return {};
  if (!/^"?\d+"?$/.test(v) && v !== '*') throw new Error(`--if-match ${v}: expected a generation number (see tunproxy get ruleset) or *`);
  return { 'if-match': v === '*' ? '*' : `"${v.replace(/"/g, '')}"` };
}

/** Progress on stderr for long work: a rewritten line on a terminal, a line every few seconds otherwise. */
export class Progress {
  private last = 0;
  private readonly tty = process.stderr.isTTY === true;
  private shown = false;
  constructor(private readonly enabled: boolean, private readonly label: string) {}
  update(done: number, total: number, force = false): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.last < (this.tty ? 200 : 2000)) return;
    this.last = now;
    const pct = total > 0 ? ` (${Math.floor((100 * done) / total)}%)` : '';
    if (this.tty) process.stderr.write(`\r${this.label}: ${done}/${total}${pct}   `);
    else process.stderr.write(`${this.label}: ${done}/${total}${pct}\n`);
    this.shown = true;
  }
  note(msg: string): void {
    if (!this.enabled) return;
    this.end();
    process.stderr.write(`${this.label}: ${msg}\n`);
  }
  end(): void {
    if (this.shown && this.tty) process.stderr.write('\n');
    this.shown = false;
  }
}
