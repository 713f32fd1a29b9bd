/**
 * The wire views in one import: `import { ipv4Check, rewriteDst, … } from '../dataplane/wire/index.ts'`.
 * Each module can also be imported on its own.
 */
export * from './bytes.ts';
export * from './error.ts';
export * from './checksum.ts';
export * from './ipv4.ts';
export * from './tcp.ts';
export * from './udp.ts';
export * from './sctp.ts';
export * from './icmp.ts';
export * from './rewrite.ts';
export * from './ipv6.ts';
export * from './icmpv6.ts';
export * from './ipv6-rewrite.ts';
