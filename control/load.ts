/** Reading rule sets from files: JSON or YAML, with errors that say which file and where. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

// yaml is loaded when a YAML file is read (the command line starts faster without it)
const parseYaml = (text: string, o: { prettyErrors: boolean }): unknown => (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse(text, o);

export function parseRuleSetText(text: string, origin: string): unknown {
  const trimmed = text.trimStart();
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`${origin}: not valid JSON: ${(e as Error).message}`);
    }
  }
  try {
    return parseYaml(text, { prettyErrors: true });
  } catch (e) {
    throw new Error(`${origin}: not valid YAML or JSON: ${(e as Error).message}`);
  }
}

export function readRuleSetFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseRuleSetText(text, path);
}
