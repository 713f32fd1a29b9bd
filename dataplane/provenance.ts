/**
 * Where state saved by a tunproxy process is valid: this boot and this
 * network namespace. A connection table from another boot or namespace
 * names flows that do not exist here; both the saved snapshot
 * (control/persist.ts) and the pinned table (conntrack-pinned.ts) check it.
 */
import { readFileSync, readlinkSync } from 'node:fs';

export interface Provenance {
  /** /proc/sys/kernel/random/boot_id ('' where there is none) */
  bootId: string;
  /** the network namespace, as /proc/self/ns/net reads ("net:[4026531840]"; '' where there is none) */
  netns: string;
}

export function hostProvenance(): Provenance {
  let bootId = '';
  let netns = '';
  try {
    bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // not Linux: no check
  }
  try {
    netns = readlinkSync('/proc/self/ns/net');
  } catch {
    // likewise
  }
  return { bootId, netns };
}
