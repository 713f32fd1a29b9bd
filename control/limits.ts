/**
 * What tunproxy does not serve that kube-proxy's iptables mode does, in the
 * words the importer, `trace` and the README use.
 */

/** kube-proxy's --iptables-localhost-nodeports (with the route_localnet sysctl). */
export const LOCALHOST_NODEPORTS_LIMIT = "not served: NodePorts on 127.0.0.1 need route_localnet; tunproxy, like kube-proxy's nftables mode, does not serve them";
