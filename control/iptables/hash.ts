/**
 * kube-proxy's chain names (pkg/proxy/iptables/proxier.go): a SHA-256 of the
 * service-port name and protocol, base32 (RFC 4648, standard alphabet),
 * first 16 characters, behind a prefix that says what the chain does.
 * iptables chain names must stay within 28 characters, hence the truncation.
 */
import { createHash } from 'node:crypto';

const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 with the standard alphabet, without padding. */
export function base32(bytes: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < bytes.length; i++) {
    acc = ((acc << 8) | bytes[i]) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

function hash16(text: string): string {
  return base32(createHash('sha256').update(text, 'utf8').digest()).slice(0, 16);
}

/**
 * kube-proxy's portProtoHash: sha256(servicePortName + protocol) in base32, first 16 characters.
 * `protocol` is lowercased as kube-proxy does ("TCP" and "tcp" give the same hash).
 */
export function portProtoHash(servicePortName: string, protocol: string): string {
  return hash16(servicePortName + protocol.toLowerCase());
}

export const SVC_PREFIX = 'KUBE-SVC-';
export const SVL_PREFIX = 'KUBE-SVL-';
export const EXT_PREFIX = 'KUBE-EXT-';
export const FW_PREFIX = 'KUBE-FW-';
export const SEP_PREFIX = 'KUBE-SEP-';
/** kube-proxy before v1.24: the externalTrafficPolicy Local chain */
export const XLB_PREFIX = 'KUBE-XLB-';

/** KUBE-SVC-…: the cluster traffic policy chain (all usable endpoints). */
export function clusterPolicyChain(servicePortName: string, protocol: string): string {
  return SVC_PREFIX + portProtoHash(servicePortName, protocol);
}

/** KUBE-SVL-…: the local traffic policy chain (endpoints on this node). */
export function localPolicyChain(servicePortName: string, protocol: string): string {
  return SVL_PREFIX + portProtoHash(servicePortName, protocol);
}

/** KUBE-EXT-…: where NodePort, external-IP and load-balancer traffic goes. */
export function externalChain(servicePortName: string, protocol: string): string {
  return EXT_PREFIX + portProtoHash(servicePortName, protocol);
}

/** KUBE-FW-…: loadBalancerSourceRanges. */
export function firewallChain(servicePortName: string, protocol: string): string {
  return FW_PREFIX + portProtoHash(servicePortName, protocol);
}

/** KUBE-SEP-…: one endpoint of one service port; `endpoint` is "ip:port". */
export function endpointChain(servicePortName: string, protocol: string, endpoint: string): string {
  return SEP_PREFIX + hash16(servicePortName + protocol.toLowerCase() + endpoint);
}

/** True for the per-service chains kube-proxy creates (and deletes when stale). */
export function isServiceChainName(chain: string): boolean {
  return (
    chain.startsWith(SVC_PREFIX) ||
    chain.startsWith(SVL_PREFIX) ||
    chain.startsWith(EXT_PREFIX) ||
    chain.startsWith(FW_PREFIX) ||
    chain.startsWith(SEP_PREFIX) ||
    chain.startsWith(XLB_PREFIX)
  );
}

/**
 * The service-port name a kube-proxy rule comment speaks of ("ns/name:port"),
 * or null for comments about no single service ("kubernetes service portals").
 */
export function serviceFromComment(comment: string | null): string | null {
  if (comment === null || comment.startsWith('kubernetes ')) return null;
  let m = /^(?:masquerade |pod |masquerade LOCAL |route LOCAL )traffic for (\S+) (?:external destinations|LB IP(?: to service chain)?)$/.exec(comment);
  if (m) return m[1];
  m = /^other traffic to (\S+) will be dropped by KUBE-PROXY-FIREWALL$/.exec(comment);
  if (m) return m[1];
  m = /^(\S+) (?:cluster IP|external IP|loadbalancer IP|has no endpoints|has no local endpoints|health check node port|nodePort|traffic not accepted by \S+|-> \S+)$/.exec(comment);
  if (m) return m[1];
  if (/^[^\s/]+\/[^\s/]+$/.test(comment)) return comment;
  return null;
}
