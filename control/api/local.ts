/**
 * The API's socket path and token file, without the server: `tunproxy run`'s
 * packet thread reads them and leaves fastify to the control worker.
 */
import { readFileSync, statSync } from 'node:fs';

export const DEFAULT_SOCKET_DIR = '/run/tunproxy';

export function defaultSocketPath(tun: string): string {
  return `${DEFAULT_SOCKET_DIR}/${tun}.sock`;
}

/** The token in a file (first line, trimmed); refused when empty or readable by others. */
export function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`--token-file ${path}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const token = text.split('\n')[0].trim();
  if (token.length < 16) throw new Error(`--token-file ${path}: the token must be at least 16 characters on the first line (e.g. openssl rand -hex 32 > ${path})`);
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o007) !== 0) throw new Error(`--token-file ${path}: the file is readable by everyone (mode ${mode.toString(8)}): chmod 600 ${path}`);
  return token;
}

