/**
 * The one place where the agent hands a rule set to the dataplane. Today it
 * is the RuleSetHolder's apply (the incremental path the API's PATCH takes:
 * the agent keeps every unchanged Service object, so only the changed ones
 * are validated and compiled). In `tunproxy run` the holder lives in the
 * control worker: apply resolves once the packet thread has the new tables in
 * force (`inForce`, the same wait the API's PUT and PATCH make).
 */
import type { RuleSetHolder, ApplyResult } from '../runtime.ts';
import type { RuleSet } from '../types.ts';

export interface RuleSetSink {
  /** validate, compile and swap in; rejects with RuleSetError (paths like services[3].ports[0]) and changes nothing */
  apply(rs: RuleSet): Promise<ApplyResult>;
}

export function holderSink(holder: RuleSetHolder, inForce?: (generation: number) => Promise<void>): RuleSetSink {
  return {
    apply: async (rs) => {
      const r = holder.apply(rs);
      if (inForce) await inForce(r.generation);
      return r;
    },
  };
}
