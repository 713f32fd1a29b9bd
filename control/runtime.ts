/**
 * The running dataplane as the control side sees it: the rule set in force,
 * its generation, and the one place where a new rule set is validated,
 * compiled and swapped in. A rejected rule set leaves the running one in force.
 */
import { performance } from 'node:perf_hooks';
import type { RuleSet } from './types.ts';
import { validateRuleSet, RuleSetError } from './validate.ts';
import { compile } from './compile.ts';
import type { Tables } from '../dataplane/tables.ts';

export interface ApplyResult {
  generation: number;
  compileMs: number;
  services: number;
  servicePorts: number;
}

export type SwapFn = (t: Tables) => void;

export class RuleSetHolder {
  private rs: RuleSet | null = null;
  private tables: Tables | null = null;
  private gen = 0;
  private readonly swaps: SwapFn[] = [];
  /** the durations of the last syncs (ms), for kube-proxy-style sync metrics */
  readonly syncListeners: Array<(ms: number, ok: boolean) => void> = [];

  get ruleSet(): RuleSet | null {
    return this.rs;
  }
  get current(): Tables | null {
    return this.tables;
  }
  get generation(): number {
    return this.gen;
  }

  /** Called with every new snapshot (the loop's setTables). */
  onSwap(fn: SwapFn): void {
    this.swaps.push(fn);
  }

  /**
   * Validate, compile and swap. Throws RuleSetError (every error with its
   * path) and changes nothing when the rule set is rejected.
   * `ifGeneration`: apply only if the generation in force is this one.
   */
  apply(input: unknown, ifGeneration?: number): ApplyResult {
    const t0 = performance.now();
    if (ifGeneration !== undefined && ifGeneration !== this.gen) {
      throw new GenerationMismatch(this.gen, ifGeneration);
    }
    const v = validateRuleSet(input);
    if (!v.ok) {
      for (const l of this.syncListeners) l(performance.now() - t0, false);
      throw new RuleSetError(v.errors);
    }
    const tables = compile(v.ruleSet, { generation: this.gen + 1 });
    this.rs = v.ruleSet;
    this.tables = tables;
    this.gen = tables.generation;
    for (const fn of this.swaps) fn(tables);
    const ms = performance.now() - t0;
    for (const l of this.syncListeners) l(ms, true);
    return { generation: this.gen, compileMs: ms, services: v.ruleSet.services.length, servicePorts: tables.services.length };
  }
}

export class GenerationMismatch extends Error {
  readonly current: number;
  readonly expected: number;
  constructor(current: number, expected: number) {
    super(`the rule set in force is generation ${current}, not ${expected}: fetch it again and retry`);
    this.name = 'GenerationMismatch';
    this.current = current;
    this.expected = expected;
  }
}
