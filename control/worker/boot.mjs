// The control worker's entry: TypeScript through tsx, as bin/tunproxy.js does for the main thread
// (hooks registered in the main thread do not reach a worker thread).
import { register } from 'tsx/esm/api';

register();
await import('./control-worker.ts');
