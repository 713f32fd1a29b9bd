/** The API server double's process (apiserver-double-cli.ts), started in a namespace or here, driven over stdin/stdout. */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('./apiserver-double-cli.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export class DoubleProcess {
  private next = 1;
  private pending = new Map<number, (m: any) => void>();
  private stderr = '';
  url = '';
  kubeconfig = '';

  private constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let m: any;
      try {
        m = JSON.parse(line);
      } catch {
        return;
      }
      const cb = this.pending.get(m.id);
      this.pending.delete(m.id);
      cb?.(m);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    child.on('exit', () => {
      for (const cb of this.pending.values()) cb({ ok: false, error: { message: `the API server double exited: ${this.stderr}` } });
      this.pending.clear();
    });
  }

  /** In namespace `ns` (null: this one), on host:port (port 0: any free one). */
  static async start(ns: string | null, args: string[] = []): Promise<DoubleProcess> {
    const argv = [process.execPath, '--import', 'tsx', CLI, ...args];
    const child = ns ? spawn('ip', ['netns', 'exec', ns, ...argv], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(argv[0], argv.slice(1), { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    const d = new DoubleProcess(child);
    const ready: any = await new Promise((resolve) => d.pending.set(0, resolve));
    if (!ready.ok) throw new Error(ready.error.message);
    d.url = ready.result.url;
    d.kubeconfig = ready.result.kubeconfig;
    return d;
  }

  async call(op: string, args: Record<string, unknown> = {}): Promise<any> {
    const id = this.next++;
    const r: any = await new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.stdin!.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
    if (!r.ok) throw new Error(`double ${op}: ${r.error.message}`);
    return r.result;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.stdin!.end();
    const t = setTimeout(() => this.child.pid && process.kill(this.child.pid, 'SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  }
}
