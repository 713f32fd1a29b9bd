/**
 * The tunproxy process's moving parts wired together: the rule set holder
 * (validate → compile → swap), the pipeline with its connection table, and,
 * when a TUN device is attached, the loop. The API server and the CLI's
 * `run` both work on one of these.
 */
import { performance } from 'node:perf_hooks';
import { RuleSetHolder } from './runtime.ts';
import { Pipeline } from '../dataplane/pipeline.ts';
import { Conntrack } from '../dataplane/conntrack.ts';
import type { Conntrack6 } from '../dataplane/conntrack6.ts';
import { AffinityTable } from '../dataplane/select.ts';
import { Loop } from '../dataplane/loop.ts';
import type { LoopOptions, PacketDevice } from '../dataplane/loop.ts';
import type { Tables } from '../dataplane/tables.ts';

export interface DataplaneOptions {
  conntrackMax?: number;
  clock?: () => number;
  /** 'linear': decide new flows by walking kube-proxy's iptables rules (for comparison) */
  decider?: 'compiled' | 'linear';
  /** the connection table to use (a PinnedConntrack); default a new Conntrack of conntrackMax */
  conntrack?: Conntrack;
  /** the IPv6 connection table to use (a PinnedConntrack6); default one like `conntrack`, made on the first IPv6 packet */
  conntrack6?: Conntrack6;
}

export class Dataplane {
  readonly holder: RuleSetHolder;
  readonly pipeline: Pipeline;
  readonly clock: () => number;
  readonly startedAt = Date.now();
  loop: Loop | null = null;
  /** tables compiled elsewhere (the control worker of tunproxy run), in force instead of the holder's */
  private installed: Tables | null = null;

  constructor(o: DataplaneOptions = {}) {
    this.clock = o.clock ?? (() => performance.now());
    this.holder = new RuleSetHolder({ decider: o.decider ?? 'compiled' });
    this.pipeline = new Pipeline({
      conntrack: o.conntrack ?? new Conntrack({ maxEntries: o.conntrackMax ?? 262144, clock: this.clock }),
      conntrack6: o.conntrack6,
      affinity: new AffinityTable(),
    });
    this.holder.onSwap((t) => {
      // --decider linear: the walk of the new rule set goes in with its tables (both between two batches:
      // the apply runs on this thread, never within one)
      this.pipeline.linear = this.holder.linear;
      this.pipeline.linear6 = this.holder.linear6;
      this.loop?.setTables(t);
    });
  }

  get tables(): Tables | null {
    return this.installed ?? this.holder.current;
  }

  /** Put tables compiled elsewhere (the control worker) in force: swapped between two batches. */
  installTables(t: Tables): void {
    this.installed = t;
    this.loop?.setTables(t);
  }

  /** Start moving packets on `device` (the rule set must be in force first). */
  attach(device: PacketDevice, opts: LoopOptions = {}): Loop {
    const t = this.tables;
    if (t === null) throw new Error('no rule set in force: apply one before attaching a device');
    if (this.loop) throw new Error('a device is already attached');
    this.loop = new Loop(device, this.pipeline, t, { clock: this.clock, ...opts });
    this.loop.start();
    return this.loop;
  }

  detach(): void {
    this.loop?.stop();
    this.loop = null;
  }

  /** One line for logs: generation, services, conntrack, packets by verdict, drops by reason. */
  statusLine(): string {
    const s = this.pipeline.counters.snapshot();
    const drops = Object.entries(s.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k}=${v}`).join(' ');
    const t = this.tables;
    return [
      `gen=${t?.generation ?? this.holder.generation}`,
      // both families: IPv4 and IPv6 service ports, IPv4 and IPv6 flows
      `services=${t ? t.liveServicePorts + (t.v6?.base.liveServicePorts ?? 0) : 0}`,
      `conntrack=${this.pipeline.conntrack.size + (this.pipeline.conntrackV6?.size ?? 0)}`,
      `fwd=${s.packets.forward}`,
      `reply=${s.packets.reply}`,
      `pass=${s.packets.pass}`,
      `drop=${s.packets.drop}${drops ? ` (${drops})` : ''}`,
      `new_flows=${s.events.new_flows}`,
    ].join(' ');
  }
}
