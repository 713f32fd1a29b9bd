/**
 * The API's request schemas, compiled when first used instead of when the
 * server starts, and all of them soon after it listens (`warm`): fastify
 * compiles every route's schemas with ajv before it serves, ~100 ms of the
 * control worker's start on the AMD machine, and the control worker's start
 * is what `tunproxy run` waits for before its ready line (a fresh start with
 * no compiling at all: medians of 10 starts 1 017 → 909 ms; lazily, with
 * the rest compiled 1 s after the API listens: 1 044 → 915 and 1 166 → 1 023 ms).
 *
 * The compiler is fastify's own (@fastify/ajv-compiler, with the server's
 * ajv options): the same validators, the same errors, only later. A request
 * that comes before `warm` got to its route compiles that one then.
 */
import AjvCompiler from '@fastify/ajv-compiler';

type Validate = ((...args: unknown[]) => unknown) & { errors?: unknown; schemaEnv?: unknown };
type RouteSchema = { schema: unknown; method: string; url: string; httpPart: string };
type Compile = (route: RouteSchema) => Validate;

export class LazyValidators {
  private readonly waiting: Array<() => void> = [];
  /** schemas compiled so far (for tests) */
  compiled = 0;

  /** fastify's `schemaController.compilersFactory.buildValidator` */
  readonly buildValidator = (externalSchemas: unknown, ajvOptions: unknown): Compile => {
    const compile = (AjvCompiler() as unknown as (e: unknown, o: unknown) => Compile)(externalSchemas, ajvOptions);
    return (route: RouteSchema): Validate => {
      let real: Validate | null = null;
      const get = (): Validate => {
        if (real === null) {
          real = compile(route);
          this.compiled++;
          // fastify passes a context to validators that have one (ajv's): from now on this one does too
          if (real.schemaEnv !== undefined) validate.schemaEnv = real.schemaEnv;
        }
        return real;
      };
      const validate: Validate = (...args: unknown[]) => {
        const v = get();
        const r = v(...args);
        validate.errors = v.errors;
        return r;
      };
      this.waiting.push(() => void get());
      return validate;
    };
  };

  /**
   * After `delayMs`, compile every schema not compiled yet, one per turn of
   * the event loop (requests go first). The delay leaves the CPU to the
   * rest of the start (the packet thread's last steps before its ready line).
   */
  warm(delayMs = 0): void {
    const next = (): void => {
      const f = this.waiting.shift();
      if (f === undefined) return;
      f();
      setImmediate(next);
    };
    setTimeout(next, delayMs).unref();
  }
}
