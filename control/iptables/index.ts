/**
 * kube-proxy's iptables mode, reproduced: chain-name hashes, the restore
 * input it writes, an iptables-save parser, a linear evaluator that walks the
 * rules as netfilter does, and an importer back to a rule set.
 */
export {
  base32,
  portProtoHash,
  clusterPolicyChain,
  localPolicyChain,
  externalChain,
  firewallChain,
  endpointChain,
  isServiceChainName,
  SVC_PREFIX,
  SVL_PREFIX,
  EXT_PREFIX,
  FW_PREFIX,
  SEP_PREFIX,
  XLB_PREFIX,
} from './hash.ts';
export { writeIptables, probabilityText, servicePortChains, endpointText, LARGE_CLUSTER_ENDPOINTS_THRESHOLD } from './writer.ts';
export type { WriteOptions, ServicePortChains } from './writer.ts';
export { parseIptablesSave, detectFamily, splitArgs, tableRules, isBuiltinChain, BUILTIN_CHAINS } from './parser.ts';
export type { ParsedIptables, ParseOptions, ParseError, Table, Chain, Rule, Match, Target, AddrMatch, PortRange, ProtocolMatch, NameMatch } from './parser.ts';
export { LinearEvaluator, linearFromText } from './linear.ts';
export { serviceFromComment } from './hash.ts';
export type { LinearOptions, LinearSample } from './linear.ts';
export { importIptables, IptablesImportError, PLACEHOLDER_REMOTE_ENDPOINT, PLACEHOLDER_REMOTE_ENDPOINT6, LOCALHOST_NODEPORTS_LIMIT, softwareOf } from './importer.ts';
export { importIptablesDualStack } from './import-dual.ts';
export type { ImportResult, ImportOptions, NotUnderstood } from './importer.ts';
