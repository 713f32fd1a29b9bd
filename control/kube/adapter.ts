/**
 * The one place where the agent hands a rule set to the dataplane. Today it
 * is the RuleSetHolder's apply (the incremental path the API's PATCH takes:
 * the agent keeps every unchanged Service object, so only the changed ones
 * are validated and compiled). When validation and compile move to a worker
 * thread, only this adapter is re-pointed.
 */
import type { RuleSetHolder, ApplyResult } from '../runtime.ts';
import type { RuleSet } from '../types.ts';

export interface RuleSetSink {
  /** validate, compile and swap in; rejects with RuleSetError (paths like services[3].ports[0]) and changes nothing */
  apply(rs: RuleSet): Promise<ApplyResult>;
}

export function holderSink(holder: RuleSetHolder): RuleSetSink {
  return {
    apply: async (rs) => holder.apply(rs),
  };
}
