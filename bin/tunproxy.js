#!/usr/bin/env node
// tunproxy: the command line. TypeScript sources run through tsx (no build step).
import { register } from 'tsx/esm/api';

register();
await import('../control/cli.ts');
