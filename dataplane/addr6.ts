/**
 * IPv6 addresses as four 32-bit words in network order (word 0 holds the
 * first 32 bits: 2001:db8::1 = [0x20010db8, 0, 0, 1]), written into a caller's
 * Uint32Array at an offset so that tables and the packet path keep them in
 * flat typed arrays, never as objects. Text is RFC 4291 §2.2 on input (every
 * form: `::`, leading zeros, an embedded dotted quad) and RFC 5952 on output
 * (lower case, leading zeros dropped, the longest run of ≥ 2 zero groups as
 * `::`, the first such run on a tie), as `ip -6` and `ip6tables-save` print.
 */
import { parseIPv4 } from './addr.ts';

/** "10.64.1.7:53", "[fd00:10:64::7]:53": an address and a port as Go's net.JoinHostPort writes them (kube-proxy's endpoint strings, iptables' --to-destination) */
export function hostPort(address: string, port: number): string {
  return looksIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Is this text meant as IPv6 (it has a colon)? Says nothing of its validity. */
export function looksIPv6(text: string): boolean {
  return text.indexOf(':') >= 0;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

const groups = new Uint16Array(8);

/**
 * Parse IPv6 text into out[off..off+4); false (out untouched) when the text is
 * not an IPv6 address. No zone (`%eth0`) and no prefix length.
 */
export function parseIPv6Into(text: string, out: Uint32Array, off = 0): boolean {
  const n = text.length;
  if (n < 2 || n > 45) return false;
  let count = 0; // groups written before or after ::
  let gap = -1; // group index where :: stands
  let i = 0;
  if (text.charCodeAt(0) === 58) {
    if (text.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
    if (i === n) {
      out.fill(0, off, off + 4);
      return true;
    }
  }
  while (i < n) {
    // one group: up to 4 hex digits, or a dotted quad as the last 32 bits
    let v = 0;
    let digits = 0;
    const start = i;
    while (i < n) {
      const h = hexValue(text.charCodeAt(i));
      if (h < 0) break;
      v = v * 16 + h;
      digits++;
      i++;
    }
    if (i < n && text.charCodeAt(i) === 46) {
      if (count > 6) return false;
      const q = parseIPv4(text.slice(start));
      if (q < 0) return false;
      groups[count++] = q >>> 16;
      groups[count++] = q & 0xffff;
      i = n;
      break;
    }
    if (digits === 0 || digits > 4 || count >= 8) return false;
    groups[count++] = v;
    if (i === n) break;
    if (text.charCodeAt(i) !== 58) return false;
    i++;
    if (i < n && text.charCodeAt(i) === 58) {
      if (gap >= 0) return false; // a second ::
      gap = count;
      i++;
      if (i === n) break;
    } else if (i === n) return false; // a trailing single colon
  }
  if (gap < 0 ? count !== 8 : count > 7) return false;
  const zeros = 8 - count;
  let w0 = 0;
  for (let g = 0; g < 8; g++) {
    let v: number;
    if (gap < 0 || g < gap) v = groups[g];
    else if (g < gap + zeros) v = 0;
    else v = groups[g - zeros];
    if ((g & 1) === 0) w0 = v;
    else out[off + (g >> 1)] = ((w0 << 16) | v) >>> 0;
  }
  return true;
}

/** Parse IPv6 text into a new Uint32Array(4), or null. (Control side; the packet path uses parseIPv6Into.) */
export function parseIPv6(text: string): Uint32Array | null {
  const w = new Uint32Array(4);
  return parseIPv6Into(text, w, 0) ? w : null;
}

/** RFC 5952 text of the address at w[off..off+4). */
export function formatIPv6(w: ArrayLike<number>, off = 0): string {
  const g: number[] = new Array(8);
  for (let i = 0; i < 4; i++) {
    const v = w[off + i] >>> 0;
    g[2 * i] = v >>> 16;
    g[2 * i + 1] = v & 0xffff;
  }
  // the longest run of two or more zero groups, the first on a tie
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  // an IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d) address prints its
  // dotted quad, as glibc's inet_ntop does (and so ip6tables-save and ip -6)
  if (best === 0 && (bestLen === 6 || (bestLen === 5 && g[5] === 0xffff))) {
    return `::${bestLen === 5 ? 'ffff:' : ''}${g[6] >>> 8}.${g[6] & 255}.${g[7] >>> 8}.${g[7] & 255}`;
  }
  const hex = (a: number, b: number): string => g.slice(a, b).map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(0, 8);
  return `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** Canonical (RFC 5952) text of IPv6 text, or null when it is not IPv6. */
export function canonicalIPv6(text: string): string | null {
  const w = parseIPv6(text);
  return w === null ? null : formatIPv6(w);
}

export interface Cidr6 {
  /** network address, host bits cleared: four words, network order */
  readonly net: Uint32Array;
  /** the mask's four words */
  readonly mask: Uint32Array;
  readonly bits: number;
}

function mask6(bits: number): Uint32Array {
  const m = new Uint32Array(4);
  for (let i = 0; i < 4; i++) {
    const b = Math.max(0, Math.min(32, bits - 32 * i));
    m[i] = b === 0 ? 0 : (0xffffffff << (32 - b)) >>> 0;
  }
  return m;
}

/** Parse "fd00::/64" (or a bare address = /128); null when malformed. */
export function parseCidr6(text: string): Cidr6 | null {
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const bitsText = slash < 0 ? '128' : text.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(bitsText)) return null;
  const bits = Number(bitsText);
  if (bits > 128) return null;
  const net = parseIPv6(addrText);
  if (net === null) return null;
  const mask = mask6(bits);
  for (let i = 0; i < 4; i++) net[i] = (net[i] & mask[i]) >>> 0;
  return { net, mask, bits };
}

export function formatCidr6(c: Cidr6): string {
  return `${formatIPv6(c.net)}/${c.bits}`;
}

/** Does the CIDR contain the address at w[off..off+4)? */
export function cidr6Contains(c: Cidr6, w: ArrayLike<number>, off = 0): boolean {
  for (let i = 0; i < 4; i++) if (((w[off + i] & c.mask[i]) >>> 0) !== c.net[i]) return false;
  return true;
}

/** Are the addresses a[ao..ao+4) and b[bo..bo+4) equal? */
export function equal6(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number): boolean {
  return a[ao] === b[bo] && a[ao + 1] === b[bo + 1] && a[ao + 2] === b[bo + 2] && a[ao + 3] === b[bo + 3];
}

/** A 32-bit hash of the four words w[o..o+4) (Addr6Ids, and the model's address pool). */
export function hash4(w: ArrayLike<number>, o: number): number {
  let h = Math.imul(w[o] ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ w[o + 1], 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16) ^ w[o + 2], 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ w[o + 3], 0xc2b2ae35);
  return h ^ (h >>> 16);
}
