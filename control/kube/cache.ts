/**
 * The agent's copy of the cluster, as kube-proxy's ServiceChangeTracker and
 * EndpointSliceCache keep it: the Service objects, the EndpointSlices of
 * each service (by slice name, so a service's endpoints are the merge of all
 * its slices) and this node's Node object. Every change marks its service
 * dirty; a sync converts only the dirty services, with the same code as the
 * kubectl importer (control/kubernetes.ts).
 */
import { convertService, finishService, mergeSlice, nodeAddressesOf, sliceServiceKey } from '../kubernetes.ts';
import type { Service } from '../types.ts';

export type Obj = Record<string, unknown>;
export type EventType = 'add' | 'update' | 'delete';

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function metaOf(o: Obj): { ns: string; name: string } | null {
  const m = isObj(o.metadata) ? o.metadata : null;
  if (!m || typeof m.name !== 'string' || m.name === '') return null;
  return { ns: typeof m.namespace === 'string' ? m.namespace : '', name: m.name };
}

/** A service's converted form, or why it has none. */
export type Built =
  | { key: string; service: Service; warnings: string[]; sliceProblems: string[] }
  | { key: string; skip: string }
  | { key: string; bad: string }
  | { key: string; gone: true };

export class KubeCache {
  /** "ns/name" → Service object */
  readonly services = new Map<string, Obj>();
  /** "ns/service" → slice name → EndpointSlice object */
  readonly slices = new Map<string, Map<string, Obj>>();
  /** "ns/slice" → the service key it was filed under (a slice's label can change) */
  private sliceOwner = new Map<string, string>();
  node: Obj | null = null;
  /** services whose objects changed since the last take() */
  readonly dirty = new Set<string>();
  nodeDirty = false;
  /** objects refused before they reach a service (a slice without namespace, an unknown addressType) */
  readonly rejected: Array<{ object: string; reason: string }> = [];

  constructor(readonly nodeName: string) {}

  onService(type: EventType, o: Obj): void {
    const m = metaOf(o);
    if (!m) return void this.rejected.push({ object: 'Service (no name)', reason: 'metadata.name is missing' });
    const key = `${m.ns}/${m.name}`;
    if (type === 'delete') this.services.delete(key);
    else this.services.set(key, o);
    this.dirty.add(key);
  }

  onSlice(type: EventType, o: Obj): void {
    const m = metaOf(o);
    if (!m) return void this.rejected.push({ object: 'EndpointSlice (no name)', reason: 'metadata.name is missing' });
    const id = `${m.ns}/${m.name}`;
    const was = this.sliceOwner.get(id);
    if (was !== undefined) {
      const set = this.slices.get(was);
      set?.delete(m.name);
      if (set?.size === 0) this.slices.delete(was);
      this.sliceOwner.delete(id);
      this.dirty.add(was);
    }
    if (type === 'delete') return;
    const k = sliceServiceKey(o, m.ns);
    if ('bad' in k) return void this.rejected.push({ object: `EndpointSlice ${id}`, reason: k.bad });
    if ('skip' in k) return; // not a service's, or IPv6/FQDN: kube-proxy does not read it either
    let set = this.slices.get(k.key);
    if (!set) this.slices.set(k.key, (set = new Map()));
    set.set(m.name, o);
    this.sliceOwner.set(id, k.key);
    this.dirty.add(k.key);
  }

  onNode(type: EventType, o: Obj): void {
    const m = metaOf(o);
    if (!m || m.name !== this.nodeName) return;
    this.node = type === 'delete' ? null : o;
    this.nodeDirty = true;
    // nodeName decides which endpoints are local: unchanged by a Node update, so no service is dirty
  }

  /** The node's IPv4 InternalIP/ExternalIP addresses and spec.podCIDR (when the Node object is known). */
  nodeInfo(): { addresses: string[]; podCIDR?: string } {
    if (!this.node) return { addresses: [] };
    const spec = isObj(this.node.spec) ? this.node.spec : {};
    const cidrs = Array.isArray(spec.podCIDRs) ? spec.podCIDRs : typeof spec.podCIDR === 'string' ? [spec.podCIDR] : [];
    const v4 = cidrs.find((c): c is string => typeof c === 'string' && !c.includes(':'));
    return v4 ? { addresses: nodeAddressesOf(this.node), podCIDR: v4 } : { addresses: nodeAddressesOf(this.node) };
  }

  /** Take the dirty set (the next sync's work). */
  take(): string[] {
    const keys = [...this.dirty];
    this.dirty.clear();
    return keys;
  }

  /** One service from its object and its slices (in slice-name order, so the merge is deterministic). */
  build(key: string): Built {
    const o = this.services.get(key);
    if (!o) return { key, gone: true };
    const m = metaOf(o)!;
    const warnings: string[] = [];
    const sliceProblems: string[] = [];
    const v = convertService(o, m.ns, m.name, `Service ${key}`, (w) => warnings.push(w));
    if ('bad' in v) return { key, bad: v.bad };
    if ('skip' in v) return { key, skip: v.skip };
    const set = this.slices.get(key);
    if (set) {
      for (const name of [...set.keys()].sort()) {
        const where = `EndpointSlice ${m.ns}/${name}`;
        mergeSlice(v.ok, set.get(name)!, where, this.nodeName, (w) => warnings.push(w), (r) => sliceProblems.push(`${where}: ${r}`));
      }
    }
    return { key, service: finishService(v.ok), warnings, sliceProblems };
  }

  /** spec.healthCheckNodePort of the services with externalTrafficPolicy Local that have one. */
  healthCheckNodePorts(): Map<string, number> {
    const out = new Map<string, number>();
    for (const [key, o] of this.services) {
      const spec = isObj(o.spec) ? o.spec : {};
      const p = spec.healthCheckNodePort;
      if (spec.externalTrafficPolicy === 'Local' && typeof p === 'number' && Number.isInteger(p) && p > 0 && p < 65536) out.set(key, p);
    }
    return out;
  }
}
