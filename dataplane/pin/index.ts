/**
 * The typed face of the pinned-memory addon (dataplane/pin/pin.c, built by
 * node-gyp into build/Release/pin.node beside tun.node): a file mapped
 * MAP_SHARED and seen from JS as an ArrayBuffer, so that what is stored in it
 * outlives the process, as Cilium pins its BPF maps in bpffs. Beside it, a
 * look into the process's C heap and a way to give its free pages back
 * (mallocInfo, mallocTrim: control/malloc-trim.ts).
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

interface PinAddon {
  map(path: string, size: number, create: boolean): ArrayBuffer;
  boottimeMs(): number;
  netnsCookie(): number;
  mallocInfo(): MallocInfo | null;
  mallocTrim(): boolean;
}

/** The process's C heap (glibc's mallinfo2 over every arena): bytes in use, free bytes kept in the arenas, bytes in chunks of their own mapping. */
export interface MallocInfo {
  inUseBytes: number;
  freeBytes: number;
  mmapBytes: number;
}

/** where `tunproxy run` pins its connection table by default (memory, not disk) */
export const DEFAULT_PIN_DIR = '/dev/shm/tunproxy';

const ADDON_PATH = fileURLToPath(new URL('../../build/Release/pin.node', import.meta.url));
let addon: PinAddon | null = null;

/** Load the addon once; throws a sentence saying how to build it when it is missing. */
export function loadPinAddon(): PinAddon {
  if (addon) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as PinAddon;
  } catch (e) {
    throw new Error(`the pinned-memory addon ${ADDON_PATH} cannot be loaded (${(e as Error).message}): run \`npx node-gyp rebuild\` in the project root`, { cause: e });
  }
  return addon;
}

/**
 * Create `path` (it must not exist) of `size` zero bytes and map it shared;
 * the returned ArrayBuffer is the file's pages. The mapping goes when the
 * buffer is collected, the file when it is unlinked.
 */
export function mapNewFile(path: string, size: number): ArrayBuffer {
  return loadPinAddon().map(path, size, true);
}

/** Map an existing file shared, whole (size 0) or its first `size` bytes. */
export function mapFile(path: string, size = 0): ArrayBuffer {
  return loadPinAddon().map(path, size, false);
}

/** CLOCK_BOOTTIME in milliseconds: one clock for the whole boot, across processes. */
export function boottimeMs(): number {
  return loadPinAddon().boottimeMs();
}

/**
 * SO_NETNS_COOKIE of this process's network namespace (Linux 5.14+): unlike
 * the namespace's inode number, never given to another namespace in the same
 * boot. null where the kernel does not have it.
 */
export function netnsCookie(): number | null {
  try {
    return loadPinAddon().netnsCookie();
  } catch {
    return null;
  }
}

/** The process's C heap, or null where it cannot be read (no glibc, the addon not built). */
export function mallocInfo(): MallocInfo | null {
  try {
    return loadPinAddon().mallocInfo();
  } catch {
    return null;
  }
}

/**
 * glibc's malloc_trim(0): the whole free pages inside every arena go back to
 * the kernel (the arenas keep them as free chunks, so the next malloc there
 * faults them in again). True when some were; false when none were, or where
 * it cannot run.
 */
export function mallocTrim(): boolean {
  try {
    return loadPinAddon().mallocTrim();
  } catch {
    return false;
  }
}
