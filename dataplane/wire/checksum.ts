/**
 * The internet checksum (RFC 1071), its incremental update (RFC 1624), the
 * IPv4 pseudo-header, and CRC32c (Castagnoli) for SCTP (RFC 4960 App. B).
 *
 * Conventions:
 * - a "sum" is the ones' complement sum of 16-bit big-endian words, folded
 *   to 16 bits and not complemented; sums chain: pass one as the `initial`
 *   of the next `checksumRaw` call (each piece must start at an even offset
 *   relative to the start of the checksummed region, except the last may
 *   have an odd length);
 * - a "checksum" is the complemented 16-bit value stored in a header.
 *
 * Computed sums are never 0 unless every word is 0, so full computations
 * give a checksum in 0..0xfffe; the RFC 1624 eqn. 3 update below gives the
 * same value as a full recomputation, bit for bit (never the other zero).
 */

/** Fold a non-negative sum (below 2^53) to 16 bits with end-around carry; not complemented. */
export function fold(sum: number): number {
  if (sum > 0xffffffff) sum = (sum & 0xffff) + Math.floor(sum / 65536);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The checksum to store for a sum: ~fold(sum) in 16 bits. */
export function checksumFinish(sum: number): number {
  return ~fold(sum) & 0xffff;
}

/**
 * Ones' complement sum of `len` bytes from `off`, added to `initial`, folded
 * to 16 bits, not complemented. An odd trailing byte is padded with a zero.
 */
export function checksumRaw(buf: Uint8Array, off: number, len: number, initial: number): number {
  let s = initial;
  let i = off;
  const end8 = off + (len & ~7);
  while (i < end8) {
    s += ((buf[i] << 8) | buf[i + 1]) + ((buf[i + 2] << 8) | buf[i + 3]) +
      ((buf[i + 4] << 8) | buf[i + 5]) + ((buf[i + 6] << 8) | buf[i + 7]);
    i += 8;
  }
  const end2 = off + (len & ~1);
  while (i < end2) {
    s += (buf[i] << 8) | buf[i + 1];
    i += 2;
  }
  if (len & 1) s += buf[i] << 8;
  return fold(s);
}

/** The complemented checksum of `len` bytes from `off` (what ICMP stores, with its field zeroed first). */
export function internetChecksum(buf: Uint8Array, off: number, len: number): number {
  return ~checksumRaw(buf, off, len, 0) & 0xffff;
}

/**
 * The header checksum an IPv4 header at `off` should carry, computed over
 * IHL*4 bytes with the checksum field taken as zero (options included).
 */
export function ipv4HeaderChecksum(buf: Uint8Array, off: number): number {
  const hlen = (buf[off] & 0x0f) << 2;
  const s = checksumRaw(buf, off, 10, 0);
  return ~checksumRaw(buf, off + 12, hlen - 12, s) & 0xffff;
}

/** Sum of the IPv4 pseudo-header (src, dst, zero, protocol, L4 length), folded, not complemented. */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, l4Len: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Len);
}

/**
 * The checksum of an L4 region (TCP, UDP) of `len` bytes at `off` whose
 * checksum field is at `off + csumAt`, taken as zero, with the IPv4
 * pseudo-header. Returns the complemented value; the UDP rule (0 → 0xffff)
 * is the caller's (see udpChecksumCompute).
 */
export function l4Checksum(
  buf: Uint8Array, off: number, len: number, csumAt: number,
  src: number, dst: number, protocol: number,
): number {
  let s = pseudoHeaderSum(src, dst, protocol, len);
  s = checksumRaw(buf, off, csumAt, s);
  s = checksumRaw(buf, off + csumAt + 2, len - csumAt - 2, s);
  return ~s & 0xffff;
}

/**
 * RFC 1624 eqn. 3 for one 16-bit word changing from `oldWord` to `newWord`:
 * HC' = ~(~HC + ~m + m'). Returns the new checksum.
 */
export function csumReplace16(check: number, oldWord: number, newWord: number): number {
  let s = (~check & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address, unsigned number)
 * changing from `oldValue` to `newValue`: both of its 16-bit words.
 */
export function csumReplace32(check: number, oldValue: number, newValue: number): number {
  let s = (~check & 0xffff) +
    (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff) +
    (newValue >>> 16) + (newValue & 0xffff);
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * UDP's version of csumReplace16: a checksum of 0 means "none" and stays 0;
 * a result of 0 is sent as 0xffff (RFC 768).
 */
export function udpCsumReplace16(check: number, oldWord: number, newWord: number): number {
  if (check === 0) return 0;
  const c = csumReplace16(check, oldWord, newWord);
  return c === 0 ? 0xffff : c;
}

/** UDP's version of csumReplace32 (0 stays 0, a computed 0 becomes 0xffff). */
export function udpCsumReplace32(check: number, oldValue: number, newValue: number): number {
  if (check === 0) return 0;
  const c = csumReplace32(check, oldValue, newValue);
  return c === 0 ? 0xffff : c;
}

/** Does the stored checksum of the region (field included) verify? The folded sum must be 0xffff. */
export function checksumVerifies(buf: Uint8Array, off: number, len: number, initial: number): boolean {
  return checksumRaw(buf, off, len, initial) === 0xffff;
}

// ---- CRC32c (Castagnoli, reflected polynomial 0x82f63b78) ----

/**
 * Slicing-by-8 tables: CRC32C_TABLE[k * 256 + n] is the register after byte n
 * followed by k zero bytes. T0 (k = 0) is the classic byte-at-a-time table.
 */
const CRC32C_TABLE = /* @__PURE__ */ (() => {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c;
  }
  for (let k = 1; k < 8; k++) {
    for (let n = 0; n < 256; n++) {
      const prev = t[(k - 1) * 256 + n];
      t[k * 256 + n] = (prev >>> 8) ^ t[prev & 0xff];
    }
  }
  return t;
})();

/**
 * Feed `len` bytes into a running CRC32c register (not pre- or post-
 * inverted: start from 0xffffffff, finish with `~crc >>> 0`). Returns the
 * register as a signed 32-bit number; compare with `>>> 0` when needed.
 * Eight bytes per step (slicing-by-8), then byte at a time.
 */
export function crc32cUpdate(crc: number, buf: Uint8Array, off: number, len: number): number {
  const t = CRC32C_TABLE;
  const end = off + len;
  let c = crc | 0;
  let i = off;
  const end8 = off + (len & ~7);
  while (i < end8) {
    const a = c ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24));
    c = t[1792 + (a & 0xff)] ^ t[1536 + ((a >>> 8) & 0xff)] ^ t[1280 + ((a >>> 16) & 0xff)] ^ t[1024 + (a >>> 24)] ^
      t[768 + buf[i + 4]] ^ t[512 + buf[i + 5]] ^ t[256 + buf[i + 6]] ^ t[buf[i + 7]];
    i += 8;
  }
  for (; i < end; i++) c = t[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return c;
}

/** Feed `n` zero bytes into a running CRC32c register. */
export function crc32cZeros(crc: number, n: number): number {
  const t = CRC32C_TABLE;
  let c = crc | 0;
  for (let i = 0; i < n; i++) c = t[c & 0xff] ^ (c >>> 8);
  return c;
}

/** The CRC32c of `len` bytes (unsigned): crc32c("123456789") = 0xe3069283. */
export function crc32c(buf: Uint8Array, off: number, len: number): number {
  return ~crc32cUpdate(0xffffffff, buf, off, len) >>> 0;
}

