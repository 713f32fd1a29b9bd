/** Kubernetes objects for the kube agent's tests and benchmark, in the shape a real cluster serves them. */
import { endpointSlice, service } from '../fixtures/kubectl-list.ts';

type Obj = Record<string, any>;
export { endpointSlice, service };

export function node(name: string, addresses: string[], podCIDR?: string): Obj {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux' } },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
    status: {
      addresses: [...addresses.map((a) => ({ type: 'InternalIP', address: a })), { type: 'Hostname', address: name }],
      conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }],
    },
  };
}

/** A ClusterIP service with one TCP port (name "http", port → targetPort). */
export function webService(ns: string, name: string, clusterIP: string, port = 80, targetPort = 8080, extra: Obj = {}): Obj {
  return service(ns, name, { clusterIP, ports: [{ name: 'http', protocol: 'TCP', port, targetPort }], ...extra });
}

export interface Ep {
  ip: string;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  nodeName?: string;
}

/** The EndpointSlice `${name}-${suffix}` of a service with one TCP port "http". */
export function webSlice(ns: string, name: string, suffix: string, port: number, eps: Ep[]): Obj {
  return endpointSlice(ns, name, suffix, [{ name: 'http', protocol: 'TCP', port }], eps);
}
