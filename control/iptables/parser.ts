/**
 * `iptables-save` / `iptables-restore` text → tables, chains and rules with
 * structured matches and targets.
 *
 * Reads both argument orders: kube-proxy's restore input
 * (`-m comment --comment "…" -m udp -p udp -d 10.32.0.10 --dport 53`) and
 * iptables-save's canonical one (`-d 10.32.0.10/32 -p udp -m comment
 * --comment "…" -m udp --dport 53`), `[packets:bytes]` counters from
 * `iptables-save -c`, `#` comments. An option belongs to the latest `-m`
 * module (or the target) that knows it, as in iptables' own option parsing.
 * Modules and targets it does not know are kept as `unknown` parts with
 * their arguments, so an importer can name them. What it cannot read at all
 * is reported as a line-numbered error; the rest of the text is still parsed.
 *
 * One family a parse: `{ family: 4 }` (the default) reads iptables-save text
 * and flags IPv6 in it; `{ family: 6 }` reads ip6tables-save text (IPv6
 * addresses and CIDRs in -s/-d, `--to-destination [fd00::1]:8080`,
 * `-p ipv6-icmp` / `-m icmp6 --icmpv6-type`, recent `--mask` of IPv6) and
 * refuses IPv4 addresses in it. `detectFamily` tells which a text is.
 */
import { parseIPv4, maskOf } from '../../dataplane/addr.ts';
import { parseIPv6, parseCidr6, formatIPv6 } from '../../dataplane/addr6.ts';

export interface ParseError {
  /** 1-based line number */
  line: number;
  message: string;
}

/** An address match: `[!] -s 10.0.0.0/8` (IPv4: net, mask), `[!] -s fd00::/64` (IPv6: net6, mask6; net and mask 0). */
export interface AddrMatch {
  net: number;
  mask: number;
  /** prefix length (0..32, IPv6 0..128), or -1 for a non-contiguous mask */
  bits: number;
  /** IPv6: the network's 4 words (host bits cleared); absent for IPv4 */
  net6?: Uint32Array;
  /** IPv6: the mask's 4 words; absent for IPv4 */
  mask6?: Uint32Array;
  invert: boolean;
  /** as written */
  text: string;
}

export interface NameMatch {
  name: string;
  invert: boolean;
}

export interface ProtocolMatch {
  /** lowercase name as written ("tcp"), or the number as text */
  name: string;
  /** IP protocol number; 0 for "all" */
  number: number;
  invert: boolean;
}

export interface PortRange {
  lo: number;
  hi: number;
}

export type Match =
  | { kind: 'comment'; comment: string }
  | {
      kind: 'port';
      module: 'tcp' | 'udp' | 'sctp';
      dport: PortRange | null;
      dportInvert: boolean;
      sport: PortRange | null;
      sportInvert: boolean;
    }
  | {
      kind: 'multiport';
      /** which ports the list applies to */
      dir: 'dst' | 'src' | 'any';
      ports: PortRange[];
      invert: boolean;
    }
  | { kind: 'addrtype'; srcType: string[] | null; srcInvert: boolean; dstType: string[] | null; dstInvert: boolean }
  | { kind: 'statistic'; mode: 'random'; probability: number; invert: boolean }
  | { kind: 'statistic'; mode: 'nth'; every: number; packet: number; invert: boolean }
  | {
      kind: 'recent';
      name: string;
      action: 'set' | 'rcheck' | 'update' | 'remove';
      /** --seconds, null when absent */
      seconds: number | null;
      reap: boolean;
      hitcount: number | null;
      mask: number;
      /** IPv6 (ip6tables): the --mask's 4 words (default all ones); absent for IPv4 */
      mask6?: Uint32Array;
      /** which address is recorded / looked up */
      side: 'src' | 'dst';
      invert: boolean;
    }
  | { kind: 'mark'; value: number; mask: number; invert: boolean }
  | { kind: 'conntrack'; ctstate: string[]; invert: boolean }
  /** `-m nfacct --nfacct-name NAME`: counts the packet in an accounting object and always matches (kube-proxy v1.29+) */
  | { kind: 'nfacct'; name: string }
  /** `-m icmp6 --icmpv6-type TYPE[/CODE]` (ip6tables): type, code (-1: any code) */
  | { kind: 'icmp6'; type: number; code: number; invert: boolean }
  | { kind: 'unknown'; module: string; args: string[]; reason: string };

export type Target =
  | { kind: 'jump'; chain: string; goto: boolean }
  | { kind: 'ACCEPT' }
  | { kind: 'DROP' }
  | { kind: 'RETURN' }
  | { kind: 'REJECT'; rejectWith: string | null }
  /** addr: IPv4 (0 for IPv6); addr6: IPv6 words (absent for IPv4); text as written (`10.1.0.1:80`, `[fd00::1]:80`) */
  | { kind: 'DNAT'; addr: number; addr6?: Uint32Array; port: number | null; portHi: number | null; text: string }
  /** mark = (mark & ~mask) ^ value, as the kernel's MARK target v2 */
  | { kind: 'MARK'; value: number; mask: number }
  | { kind: 'MASQUERADE'; randomFully: boolean; random: boolean; toPorts: string | null }
  | { kind: 'unknown'; name: string; args: string[]; reason: string };

export interface Rule {
  /** 1-based line of the rule in the text */
  line: number;
  /** the line as written */
  text: string;
  table: string;
  chain: string;
  counters: { packets: number; bytes: number } | null;
  src: AddrMatch | null;
  dst: AddrMatch | null;
  protocol: ProtocolMatch | null;
  inInterface: NameMatch | null;
  outInterface: NameMatch | null;
  /** `[!] -f` */
  fragment: { invert: boolean } | null;
  matches: Match[];
  /** null: a rule without -j/-g (it only counts) */
  target: Target | null;
  /** the first `-m comment --comment` text, or null */
  comment: string | null;
}

export interface Chain {
  name: string;
  /** built-in chains: "ACCEPT" / "DROP"; user chains: null */
  policy: string | null;
  counters: { packets: number; bytes: number } | null;
  /** line of the `:CHAIN` declaration, 0 when only created by a rule */
  line: number;
  rules: Rule[];
}

export interface Table {
  name: string;
  chains: Map<string, Chain>;
}

export interface ParsedIptables {
  tables: Map<string, Table>;
  errors: ParseError[];
  /** an ip6tables dump (family 6), or IPv6 seen in a family-4 parse */
  ipv6: boolean;
  /** the family the text was read as: 4 (iptables-save) or 6 (ip6tables-save) */
  family: 4 | 6;
}

export interface ParseOptions {
  /** 4: iptables-save text (default); 6: ip6tables-save text */
  family?: 4 | 6;
}

/**
 * Which family a save text is: 6 when its header says ip6tables-save, or
 * when the first address of a -s/-d/--to-destination is IPv6; else 4.
 */
export function detectFamily(text: string): 4 | 6 {
  const head = /^#.*\bip(6?)tables(?:-nft|-legacy)?-(save|restore)\b/m.exec(text);
  if (head) return head[1] === '6' ? 6 : 4;
  const m = /(?:^|\s)(?:-s|-d|--source|--destination|--to-destination)\s+(\S+)/m.exec(text);
  return m && m[1].includes(':') && !/^[0-9.]+:[0-9-]+$/.test(m[1]) ? 6 : 4;
}

/** ICMPv6 type names ip6tables knows (libxt_icmp's icmpv6_codes): name → [type, code or -1] */
const ICMPV6_TYPES: Record<string, [number, number]> = {
  'destination-unreachable': [1, -1],
  'no-route': [1, 0],
  'communication-prohibited': [1, 1],
  'beyond-scope': [1, 2],
  'address-unreachable': [1, 3],
  'port-unreachable': [1, 4],
  'failed-policy': [1, 5],
  'reject-route': [1, 6],
  'packet-too-big': [2, -1],
  'time-exceeded': [3, -1],
  'ttl-exceeded': [3, -1],
  'ttl-zero-during-transit': [3, 0],
  'ttl-zero-during-reassembly': [3, 1],
  'parameter-problem': [4, -1],
  'bad-header': [4, 0],
  'unknown-header-type': [4, 1],
  'unknown-option': [4, 2],
  'echo-request': [128, -1],
  ping: [128, -1],
  'echo-reply': [129, -1],
  pong: [129, -1],
  'router-solicitation': [133, -1],
  'router-advertisement': [134, -1],
  'neighbour-solicitation': [135, -1],
  'neighbor-solicitation': [135, -1],
  'neighbour-advertisement': [136, -1],
  'neighbor-advertisement': [136, -1],
  redirect: [137, -1],
}

export const BUILTIN_CHAINS: Record<string, string[]> = {
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  raw: ['PREROUTING', 'OUTPUT'],
  security: ['INPUT', 'FORWARD', 'OUTPUT'],
};

export function isBuiltinChain(table: string, chain: string): boolean {
  return (BUILTIN_CHAINS[table] ?? []).includes(chain);
}

/** Targets that are extensions, not chains (a `-j NAME` with one of these names is a target unless NAME is a declared chain). */
const TARGET_NAMES = new Set([
  'ACCEPT', 'DROP', 'RETURN', 'QUEUE', 'REJECT', 'DNAT', 'SNAT', 'MASQUERADE', 'MARK', 'CONNMARK', 'LOG', 'NFLOG',
  'ULOG', 'REDIRECT', 'TPROXY', 'CT', 'NOTRACK', 'TRACE', 'CHECKSUM', 'TCPMSS', 'CLASSIFY', 'DSCP', 'TOS', 'TTL',
  'HL', 'SET', 'AUDIT', 'NETMAP', 'NFQUEUE', 'SECMARK', 'CONNSECMARK', 'HMARK', 'IDLETIMER', 'LED', 'RATEEST',
  'SYNPROXY', 'TEE', 'CLUSTERIP', 'TCPOPTSTRIP', 'CONNTRACK',
]);

/** option name (without --) → number of values, for the modules read here */
const MATCH_OPTIONS: Record<string, Record<string, number>> = {
  comment: { comment: 1 },
  tcp: { dport: 1, 'destination-port': 1, sport: 1, 'source-port': 1, syn: 0, 'tcp-flags': 2, 'tcp-option': 1 },
  udp: { dport: 1, 'destination-port': 1, sport: 1, 'source-port': 1 },
  sctp: { dport: 1, 'destination-port': 1, sport: 1, 'source-port': 1, 'chunk-types': 2 },
  multiport: { dports: 1, 'destination-ports': 1, sports: 1, 'source-ports': 1, ports: 1 },
  addrtype: { 'src-type': 1, 'dst-type': 1, 'limit-iface-in': 0, 'limit-iface-out': 0 },
  statistic: { mode: 1, probability: 1, every: 1, packet: 1 },
  recent: { name: 1, set: 0, rcheck: 0, update: 0, remove: 0, seconds: 1, reap: 0, hitcount: 1, rttl: 0, mask: 1, rsource: 0, rdest: 0 },
  mark: { mark: 1 },
  conntrack: {
    ctstate: 1, ctproto: 1, ctorigsrc: 1, ctorigdst: 1, ctreplsrc: 1, ctrepldst: 1, ctorigsrcport: 1,
    ctorigdstport: 1, ctreplsrcport: 1, ctrepldstport: 1, ctstatus: 1, ctexpire: 1, ctdir: 1,
  },
  state: { state: 1 },
  icmp6: { 'icmpv6-type': 1 },
};

const TARGET_OPTIONS: Record<string, Record<string, number>> = {
  ACCEPT: {},
  DROP: {},
  RETURN: {},
  REJECT: { 'reject-with': 1 },
  DNAT: { 'to-destination': 1, random: 0, persistent: 0 },
  MARK: { 'set-xmark': 1, 'set-mark': 1, 'or-mark': 1, 'xor-mark': 1, 'and-mark': 1 },
  MASQUERADE: { 'to-ports': 1, random: 0, 'random-fully': 0 },
};

const PROTOCOLS: Record<string, number> = {
  all: 0, icmp: 1, igmp: 2, tcp: 6, udp: 17, gre: 47, esp: 50, ah: 51, icmpv6: 58, 'ipv6-icmp': 58, sctp: 132, udplite: 136,
};

/** Split a restore line into arguments as iptables-restore does: blanks separate, "…" quotes, \ escapes inside quotes. */
export function splitArgs(line: string): string[] {
  const out: string[] = [];
  const n = line.length;
  if (line.indexOf('"') < 0) {
    // no quotes (most of iptables-save): blanks separate, nothing else is special
    let i = 0;
    while (i < n) {
      let c = line.charCodeAt(i);
      while (i < n && (c === 32 || c === 9 || c === 13)) c = line.charCodeAt(++i);
      if (i >= n) break;
      const start = i;
      while (i < n && c !== 32 && c !== 9 && c !== 13) c = line.charCodeAt(++i);
      out.push(line.slice(start, i));
    }
    return out;
  }
  let cur = '';
  let has = false;
  let quoted = false;
  let start = 0; // start of the pending plain run
  for (let i = 0; i < n; i++) {
    const c = line.charCodeAt(i);
    if (quoted) {
      if (c === 92 /* \ */ && i + 1 < n) {
        cur += line.slice(start, i) + line[i + 1];
        i++;
        start = i + 1;
      } else if (c === 34 /* " */) {
        cur += line.slice(start, i);
        start = i + 1;
        quoted = false;
      }
      continue;
    }
    if (c === 34) {
      cur += line.slice(start, i);
      start = i + 1;
      quoted = true;
      has = true;
    } else if (c === 32 || c === 9 || c === 13) {
      cur += line.slice(start, i);
      start = i + 1;
      if (has || cur !== '') {
        out.push(cur);
        cur = '';
        has = false;
      }
    }
  }
  if (quoted) throw new Error('unterminated quote');
  cur += line.slice(start);
  if (has || cur !== '') out.push(cur);
  return out;
}

class RuleError extends Error {}

function fail(message: string): never {
  throw new RuleError(message);
}

function parseNumber(text: string, what: string, max = 0xffffffff): number {
  if (!/^(0x[0-9a-fA-F]+|[0-9]+)$/.test(text)) fail(`${what}: '${text}' is not a number`);
  const n = Number(text);
  if (n > max) fail(`${what}: ${text} is out of range`);
  return n;
}

interface Ctx {
  ipv6: boolean;
  family: 4 | 6;
}

function parseAddr6(text: string, invert: boolean, opt: string): AddrMatch {
  if (text.includes(',')) fail(`${opt} ${text}: address lists are not read (ip6tables-save prints one address per rule)`);
  if (!text.includes(':')) fail(`${opt} ${text}: an IPv4 address in an ip6tables dump`);
  const slash = text.indexOf('/');
  const m = slash < 0 ? '' : text.slice(slash + 1);
  let c;
  if (slash >= 0 && m.includes(':')) {
    // a mask written as an address: contiguous ones only
    const mask = parseIPv6(m);
    const addr = parseIPv6(text.slice(0, slash));
    if (!mask || !addr) fail(`${opt} ${text}: not an IPv6 address and mask`);
    let bits = 0;
    while (bits < 128 && (mask[bits >>> 5] >>> (31 - (bits & 31))) & 1) bits++;
    c = parseCidr6(`${formatIPv6(addr)}/${bits}`);
    if (!c || c.mask.some((w, i) => w !== mask[i])) fail(`${opt} ${text}: a non-contiguous IPv6 mask is not read`);
  } else {
    c = parseCidr6(text);
    if (!c) fail(slash >= 0 && /^[0-9]+$/.test(m) && Number(m) > 128 ? `${opt} ${text}: prefix length ${m} is over 128` : `${opt} ${text}: not an IPv6 address or CIDR`);
  }
  return { net: 0, mask: 0, bits: c.bits, invert, text, net6: c.net, mask6: c.mask };
}

function parseAddr(text: string, invert: boolean, opt: string, ctx: Ctx): AddrMatch {
  if (ctx.family === 6) return parseAddr6(text, invert, opt);
  if (text.includes(':')) {
    ctx.ipv6 = true;
    fail(`${opt} ${text}: an IPv6 address (tunproxy handles IPv4 only)`);
  }
  if (text.includes(',')) fail(`${opt} ${text}: address lists are not read (iptables-save prints one address per rule)`);
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const a = parseIPv4(addrText);
  if (a < 0) fail(`${opt} ${text}: not an IPv4 address`);
  let mask = 0xffffffff;
  let bits = 32;
  if (slash >= 0) {
    const m = text.slice(slash + 1);
    if (/^[0-9]{1,2}$/.test(m)) {
      bits = Number(m);
      if (bits > 32) fail(`${opt} ${text}: prefix length ${bits} is over 32`);
      mask = maskOf(bits);
    } else {
      const dotted = parseIPv4(m);
      if (dotted < 0) fail(`${opt} ${text}: bad mask '${m}'`);
      mask = dotted;
      bits = -1;
      for (let b = 0; b <= 32; b++) if (maskOf(b) === dotted) bits = b;
    }
  }
  return { net: (a & mask) >>> 0, mask, bits, invert, text };
}

function parsePortRange(text: string, opt: string): PortRange {
  const m = /^([0-9]*)(?::([0-9]*))?$/.exec(text);
  if (!m || (m[1] === '' && m[2] === undefined)) fail(`--${opt} ${text}: not a port or port range (port names are not read)`);
  const lo = m[1] === '' ? 0 : Number(m[1]);
  const hi = m[2] === undefined ? lo : m[2] === '' ? 65535 : Number(m[2]);
  if (lo > 65535 || hi > 65535) fail(`--${opt} ${text}: port out of range`);
  return { lo, hi };
}

/** `0x4000/0x4000` or `0x4000` → [value, mask] */
function parseMarkMask(text: string, opt: string, defaultMask: number): [number, number] {
  const slash = text.indexOf('/');
  if (slash < 0) return [parseNumber(text, `--${opt}`), defaultMask];
  return [parseNumber(text.slice(0, slash), `--${opt}`), parseNumber(text.slice(slash + 1), `--${opt} mask`)];
}

interface RawOption {
  name: string;
  values: string[];
  invert: boolean;
}

interface RawPart {
  module: string;
  options: RawOption[];
  /** the module is one this parser reads */
  known: boolean;
}

function rawArgs(p: RawPart): string[] {
  const args: string[] = [];
  for (const o of p.options) {
    if (o.invert) args.push('!');
    args.push('--' + o.name, ...o.values);
  }
  return args;
}

function unknownMatch(p: RawPart, reason: string): Match {
  return { kind: 'unknown', module: p.module, args: rawArgs(p), reason };
}

/** the part's options by name: a few at most, so a scan (the last one given wins, as in iptables) */
class Options {
  constructor(private readonly list: RawOption[]) {}
  get(name: string): RawOption | undefined {
    for (let i = this.list.length - 1; i >= 0; i--) if (this.list[i].name === name) return this.list[i];
    return undefined;
  }
  has(name: string): boolean {
    return this.get(name) !== undefined;
  }
  value(name: string): string | undefined {
    return this.get(name)?.values[0];
  }
}

function buildMatch(p: RawPart, ctx: Ctx): Match {
  const opts = new Options(p.options);
  switch (p.module) {
    case 'comment': {
      const c = p.options.length === 1 && p.options[0].name === 'comment' ? p.options[0].values[0] : opts.value('comment');
      if (c === undefined) fail('-m comment without --comment');
      return { kind: 'comment', comment: c };
    }
    case 'tcp':
    case 'udp':
    case 'sctp': {
      for (const o of p.options) {
        if (!['dport', 'destination-port', 'sport', 'source-port'].includes(o.name)) {
          return unknownMatch(p, `-m ${p.module} --${o.name} is not evaluated`);
        }
      }
      const d = opts.get('dport') ?? opts.get('destination-port');
      const s = opts.get('sport') ?? opts.get('source-port');
      return {
        kind: 'port',
        module: p.module,
        dport: d ? parsePortRange(d.values[0], d.name) : null,
        dportInvert: d?.invert ?? false,
        sport: s ? parsePortRange(s.values[0], s.name) : null,
        sportInvert: s?.invert ?? false,
      };
    }
    case 'multiport': {
      if (p.options.length !== 1) fail('-m multiport needs exactly one of --dports, --sports, --ports');
      const o = p.options[0];
      const dir = o.name === 'ports' ? 'any' : o.name.startsWith('d') ? 'dst' : 'src';
      const ports = o.values[0].split(',').map((x) => parsePortRange(x, o.name));
      return { kind: 'multiport', dir, ports, invert: o.invert };
    }
    case 'addrtype': {
      if (opts.has('limit-iface-in') || opts.has('limit-iface-out')) return unknownMatch(p, 'addrtype --limit-iface-* is not evaluated');
      const s = opts.get('src-type');
      const d = opts.get('dst-type');
      if (!s && !d) fail('-m addrtype without --src-type or --dst-type');
      return {
        kind: 'addrtype',
        srcType: s ? s.values[0].toUpperCase().split(',') : null,
        srcInvert: s?.invert ?? false,
        dstType: d ? d.values[0].toUpperCase().split(',') : null,
        dstInvert: d?.invert ?? false,
      };
    }
    case 'statistic': {
      const mode = opts.value('mode');
      const inverted = p.options.some((o) => o.invert);
      if (mode === 'random') {
        const pt = opts.value('probability');
        if (pt === undefined) fail('-m statistic --mode random without --probability');
        const prob = Number(pt);
        if (!/^[0-9.]+$/.test(pt) || !(prob >= 0 && prob <= 1)) fail(`--probability ${pt}: not a number between 0 and 1`);
        return { kind: 'statistic', mode: 'random', probability: prob, invert: inverted };
      }
      if (mode === 'nth') {
        const every = opts.value('every');
        if (every === undefined) fail('-m statistic --mode nth without --every');
        const packet = opts.value('packet');
        return {
          kind: 'statistic',
          mode: 'nth',
          every: parseNumber(every, '--every'),
          packet: packet === undefined ? 0 : parseNumber(packet, '--packet'),
          invert: inverted,
        };
      }
      fail(`-m statistic --mode ${mode ?? '(missing)'}: expected random or nth`);
    }
    // eslint-disable-next-line no-fallthrough
    case 'recent': {
      const actions = (['set', 'rcheck', 'update', 'remove'] as const).filter((a) => opts.has(a));
      if (actions.length !== 1) fail('-m recent needs exactly one of --set, --rcheck, --update, --remove');
      if (opts.has('rttl')) return unknownMatch(p, 'recent --rttl is not evaluated');
      const secs = opts.value('seconds');
      const hit = opts.value('hitcount');
      const maskText = opts.value('mask');
      let mask = 0xffffffff;
      let mask6: Uint32Array | null = null;
      if (ctx.family === 6) {
        mask6 = maskText === undefined ? new Uint32Array([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff]) : parseIPv6(maskText);
        if (mask6 === null) fail(`--mask ${maskText}: not an IPv6 mask`);
      } else if (maskText !== undefined) {
        if (maskText.includes(':')) ctx.ipv6 = true;
        mask = parseIPv4(maskText);
        if (mask < 0) fail(`--mask ${maskText}: not an IPv4 mask`);
      }
      return {
        kind: 'recent',
        name: opts.value('name') ?? 'DEFAULT',
        action: actions[0],
        seconds: secs === undefined ? null : parseNumber(secs, '--seconds'),
        reap: opts.has('reap'),
        hitcount: hit === undefined ? null : parseNumber(hit, '--hitcount'),
        mask,
        ...(mask6 ? { mask6 } : {}),
        side: opts.has('rdest') ? 'dst' : 'src',
        invert: opts.get(actions[0])!.invert,
      };
    }
    case 'mark': {
      const o = opts.get('mark');
      if (!o) fail('-m mark without --mark');
      const [value, mask] = parseMarkMask(o.values[0], 'mark', 0xffffffff);
      return { kind: 'mark', value, mask, invert: o.invert };
    }
    case 'conntrack':
    case 'state': {
      const key = p.module === 'state' ? 'state' : 'ctstate';
      const o = opts.get(key);
      if (!o || p.options.length !== 1) return unknownMatch(p, `-m ${p.module}: only --${key} is evaluated`);
      return { kind: 'conntrack', ctstate: o.values[0].toUpperCase().split(','), invert: o.invert };
    }
    case 'nfacct': {
      const o = opts.get('nfacct-name');
      if (!o || p.options.length !== 1 || o.invert) return unknownMatch(p, '-m nfacct: only --nfacct-name is read');
      return { kind: 'nfacct', name: o.values[0] };
    }
    case 'icmp6': {
      const o = opts.get('icmpv6-type');
      if (!o) fail('-m icmp6 without --icmpv6-type');
      if (ctx.family !== 6) return unknownMatch(p, '-m icmp6 in an IPv4 dump');
      const text = o.values[0].toLowerCase();
      let type: number;
      let code = -1;
      const num = /^([0-9]+)(?:\/([0-9]+))?$/.exec(text);
      if (num) {
        type = parseNumber(num[1], '--icmpv6-type', 255);
        if (num[2] !== undefined) code = parseNumber(num[2], '--icmpv6-type code', 255);
      } else if (text in ICMPV6_TYPES) {
        [type, code] = ICMPV6_TYPES[text];
      } else fail(`--icmpv6-type ${o.values[0]}: unknown ICMPv6 type`);
      return { kind: 'icmp6', type, code, invert: o.invert };
    }
    default:
      return unknownMatch(p, `match module '${p.module}' is not evaluated`);
  }
}

function buildTarget(name: string, p: RawPart, ctx: Ctx): Target {
  const opts = new Options(p.options);
  const unknown = (reason: string): Target => ({ kind: 'unknown', name, args: rawArgs(p), reason });
  switch (name) {
    case 'ACCEPT':
    case 'DROP':
    case 'RETURN':
      if (p.options.length) fail(`-j ${name} takes no options`);
      return { kind: name };
    case 'REJECT':
      return { kind: 'REJECT', rejectWith: opts.value('reject-with') ?? null };
    case 'DNAT': {
      const to = opts.value('to-destination');
      if (to === undefined) fail('-j DNAT without --to-destination');
      if (opts.has('random') || opts.has('persistent')) return unknown('DNAT --random/--persistent is not evaluated');
      if (ctx.family === 6) {
        // [fd00::1]:8080, [fd00::1], fd00::1 (ip6tables' forms; a range [a]-[b] is not read)
        const m6 = /^\[([0-9a-fA-F:.]+)\](?::([0-9]+)(?:-([0-9]+))?)?$/.exec(to) ?? /^()([0-9a-fA-F:.]*:[0-9a-fA-F:.]*)$/.exec(to);
        if (!m6) fail(`--to-destination ${to}: expected [address]:port or address (IPv6)`);
        const bracketed = to.startsWith('[');
        const addr6 = parseIPv6(bracketed ? m6[1] : m6[2]);
        if (addr6 === null) fail(`--to-destination ${to}: not an IPv6 address`);
        const port = bracketed && m6[2] !== undefined ? parseNumber(m6[2], '--to-destination port', 65535) : null;
        const portHi = bracketed && m6[3] !== undefined ? parseNumber(m6[3], '--to-destination port', 65535) : port;
        if (port !== portHi) return unknown('DNAT to a port range is not evaluated');
        return { kind: 'DNAT', addr: 0, addr6, port, portHi, text: to };
      }
      if (to.startsWith('[') || (to.match(/:/g) ?? []).length > 1) {
        ctx.ipv6 = true;
        fail(`--to-destination ${to}: an IPv6 address (tunproxy handles IPv4 only)`);
      }
      const m = /^([0-9.]+)(?:-([0-9.]+))?(?::([0-9]+)(?:-([0-9]+))?)?$/.exec(to);
      if (!m) fail(`--to-destination ${to}: expected address[:port]`);
      if (m[2] !== undefined) return unknown('DNAT to an address range is not evaluated');
      const addr = parseIPv4(m[1]);
      if (addr < 0) fail(`--to-destination ${to}: not an IPv4 address`);
      const port = m[3] === undefined ? null : parseNumber(m[3], '--to-destination port', 65535);
      const portHi = m[4] === undefined ? port : parseNumber(m[4], '--to-destination port', 65535);
      if (port !== portHi) return unknown('DNAT to a port range is not evaluated');
      return { kind: 'DNAT', addr, port, portHi, text: to };
    }
    case 'MARK': {
      if (p.options.length !== 1) fail('-j MARK needs exactly one of --set-xmark, --set-mark, --or-mark, --xor-mark, --and-mark');
      const o = p.options[0];
      const text = o.values[0];
      switch (o.name) {
        case 'set-xmark': {
          const [value, mask] = parseMarkMask(text, o.name, 0xffffffff);
          return { kind: 'MARK', value, mask };
        }
        case 'set-mark': {
          const [value, mask] = parseMarkMask(text, o.name, 0xffffffff);
          return { kind: 'MARK', value, mask: (mask | value) >>> 0 };
        }
        case 'or-mark': {
          const value = parseNumber(text, '--or-mark');
          return { kind: 'MARK', value, mask: value };
        }
        case 'xor-mark':
          return { kind: 'MARK', value: parseNumber(text, '--xor-mark'), mask: 0 };
        case 'and-mark':
          return { kind: 'MARK', value: 0, mask: ~parseNumber(text, '--and-mark') >>> 0 };
      }
      fail(`-j MARK --${o.name}: unknown option`);
    }
    // eslint-disable-next-line no-fallthrough
    case 'MASQUERADE':
      return { kind: 'MASQUERADE', randomFully: opts.has('random-fully'), random: opts.has('random'), toPorts: opts.value('to-ports') ?? null };
    default:
      return unknown(`target '${name}' is not evaluated`);
  }
}

function need(args: string[], i: number, k: number, opt: string): void {
  if (i + k >= args.length) fail(`${opt} needs ${k === 1 ? 'an argument' : k + ' arguments'}`);
}

const ADDR_OPTS = new Set(['-s', '--source', '--src', '-d', '--destination', '--dst']);
const TOP_OPTS = new Set([
  ...ADDR_OPTS, '-p', '--protocol', '-i', '--in-interface', '-o', '--out-interface', '-f', '--fragment',
  '-m', '--match', '-j', '--jump', '-g', '--goto', '-c', '--set-counters',
]);

function parseRule(
  args: string[],
  base: { line: number; text: string; table: string; chain: string; counters: Rule['counters'] },
  declared: Map<string, Chain>,
  ctx: Ctx,
): Rule {
  const rule: Rule = {
    line: base.line,
    text: base.text,
    table: base.table,
    chain: base.chain,
    counters: base.counters,
    src: null,
    dst: null,
    protocol: null,
    inInterface: null,
    outInterface: null,
    fragment: null,
    matches: [],
    target: null,
    comment: null,
  };
  const parts: RawPart[] = [];
  let targetName: string | null = null;
  let targetGoto = false;
  let targetPart: RawPart | null = null;
  let implicitPort: RawPart | null = null;
  let invert = false;
  let i = 0;
  while (i < args.length) {
    const a = args[i];
    if (a === '!') {
      if (invert) fail("'!' twice in a row");
      invert = true;
      i++;
      continue;
    }
    if (TOP_OPTS.has(a)) {
      if (ADDR_OPTS.has(a)) {
        need(args, i, 1, a);
        const addr = parseAddr(args[i + 1], invert, a, ctx);
        if (a.startsWith('-s') || a === '--source' || a === '--src') {
          if (rule.src) fail(`${a} given twice`);
          rule.src = addr;
        } else {
          if (rule.dst) fail(`${a} given twice`);
          rule.dst = addr;
        }
        i += 2;
      } else if (a === '-p' || a === '--protocol') {
        need(args, i, 1, a);
        const name = args[i + 1].toLowerCase();
        let num: number;
        if (/^[0-9]+$/.test(name)) num = parseNumber(name, a, 255);
        else if (name in PROTOCOLS) num = PROTOCOLS[name];
        else fail(`${a} ${args[i + 1]}: unknown protocol`);
        if (num === 58 && ctx.family === 4) ctx.ipv6 = true;
        rule.protocol = num === 0 && !invert ? null : { name, number: num, invert };
        i += 2;
      } else if (a === '-i' || a === '--in-interface' || a === '-o' || a === '--out-interface') {
        need(args, i, 1, a);
        const m = { name: args[i + 1], invert };
        if (a === '-i' || a === '--in-interface') rule.inInterface = m;
        else rule.outInterface = m;
        i += 2;
      } else if (a === '-f' || a === '--fragment') {
        rule.fragment = { invert };
        i += 1;
      } else if (a === '-m' || a === '--match') {
        if (invert) fail(`'!' before ${a}`);
        need(args, i, 1, a);
        const module = args[i + 1];
        parts.push({ module, options: [], known: module in MATCH_OPTIONS });
        i += 2;
      } else if (a === '-j' || a === '--jump' || a === '-g' || a === '--goto') {
        if (invert) fail(`'!' before ${a}`);
        need(args, i, 1, a);
        if (targetName !== null) fail('more than one target');
        targetName = args[i + 1];
        targetGoto = a === '-g' || a === '--goto';
        const isChain = declared.has(targetName) || !TARGET_NAMES.has(targetName) || targetGoto;
        targetPart = isChain ? null : { module: targetName, options: [], known: targetName in TARGET_OPTIONS };
        i += 2;
      } else {
        // -c packets bytes
        need(args, i, 2, a);
        rule.counters = { packets: parseNumber(args[i + 1], a, Number.MAX_SAFE_INTEGER), bytes: parseNumber(args[i + 2], a, Number.MAX_SAFE_INTEGER) };
        i += 3;
      }
      invert = false;
      continue;
    }
    if (!a.startsWith('--')) fail(`unexpected argument '${a}'`);
    const name = a.slice(2);
    // whose option is it: the target's, else the latest module that knows it
    let owner: RawPart | null = null;
    let arity = -1;
    if (targetPart) {
      if (targetPart.known) {
        const n = TARGET_OPTIONS[targetPart.module][name];
        if (n !== undefined) {
          owner = targetPart;
          arity = n;
        }
      } else {
        owner = targetPart;
      }
    }
    if (!owner) {
      for (let k = parts.length - 1; k >= 0; k--) {
        const p = parts[k];
        if (p.known) {
          const n = MATCH_OPTIONS[p.module][name];
          if (n !== undefined) {
            owner = p;
            arity = n;
            break;
          }
        } else if (k === parts.length - 1) {
          owner = p;
          break;
        }
      }
    }
    const implicitModule = rule.protocol && !rule.protocol.invert ? (['tcp', 'udp', 'sctp'].includes(rule.protocol.name) ? rule.protocol.name : ctx.family === 6 && rule.protocol.number === 58 ? 'icmp6' : null) : null;
    if (!owner && implicitModule !== null) {
      const n = MATCH_OPTIONS[implicitModule][name];
      if (n !== undefined) {
        // `-p tcp --dport 80` loads the tcp match implicitly (`-p ipv6-icmp --icmpv6-type …` the icmp6 one)
        if (!implicitPort) {
          implicitPort = { module: implicitModule, options: [], known: true };
          parts.push(implicitPort);
        }
        owner = implicitPort;
        arity = n;
      }
    }
    if (!owner) {
      if (targetName !== null && !targetPart) fail(`unknown option '${a}' (the target ${targetName} is a chain and takes no options)`);
      fail(`unknown option '${a}'`);
    }
    if (arity < 0) {
      // an unknown module or target: its option's values run to the next option
      arity = 0;
      while (i + 1 + arity < args.length && !args[i + 1 + arity].startsWith('-') && args[i + 1 + arity] !== '!') arity++;
    }
    need(args, i, arity, a);
    owner.options.push({ name, values: args.slice(i + 1, i + 1 + arity), invert });
    invert = false;
    i += 1 + arity;
  }
  if (invert) fail("'!' at the end of the rule");
  for (const p of parts) {
    const m = buildMatch(p, ctx);
    rule.matches.push(m);
    if (m.kind === 'comment' && rule.comment === null) rule.comment = m.comment;
  }
  if (targetName !== null) {
    rule.target = targetPart ? buildTarget(targetName, targetPart, ctx) : { kind: 'jump', chain: targetName, goto: targetGoto };
  }
  return rule;
}

function at(line: number, message: string): ParseError {
  return { line, message };
}

function parseCounters(text: string): { packets: number; bytes: number } | null {
  const m = /^\[([0-9]+):([0-9]+)\]$/.exec(text);
  return m ? { packets: Number(m[1]), bytes: Number(m[2]) } : null;
}

/** Parse `iptables-save` (or restore-input) text; `{ family: 6 }`: `ip6tables-save` text. Never throws: what cannot be read is in `errors`. */
export function parseIptablesSave(text: string, opts: ParseOptions = {}): ParsedIptables {
  const tables = new Map<string, Table>();
  const errors: ParseError[] = [];
  const family = opts.family ?? 4;
  const ctx: Ctx = { ipv6: family === 6, family };
  let table: Table | null = null;
  let tableLine = 0;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const lineNo = n + 1;
    const raw = lines[n].replace(/\r$/, '');
    const line = raw.trim();
    if (line === '') continue;
    if (line.startsWith('#')) {
      if (/ip6tables(-nft|-legacy)?-save/.test(line)) ctx.ipv6 = true;
      continue;
    }
    if (line.startsWith('*')) {
      if (table) errors.push(at(lineNo, `table '${table.name}' (line ${tableLine}) has no COMMIT before '*'`));
      const name = line.slice(1).trim();
      if (!/^[a-z]+$/.test(name)) {
        errors.push(at(lineNo, `'${line}': bad table name`));
        table = null;
        continue;
      }
      table = tables.get(name) ?? { name, chains: new Map() };
      tables.set(name, table);
      tableLine = lineNo;
      continue;
    }
    if (line === 'COMMIT') {
      if (!table) errors.push(at(lineNo, 'COMMIT outside a table'));
      table = null;
      continue;
    }
    if (!table) {
      errors.push(at(lineNo, `'${line.slice(0, 40)}': outside a table (no '*table' line before it)`));
      continue;
    }
    if (line.startsWith(':')) {
      const parts = line.slice(1).split(/\s+/);
      const name = parts[0];
      const policy = parts[1];
      if (!name || policy === undefined) {
        errors.push(at(lineNo, `'${line}': a chain line is ':NAME POLICY [packets:bytes]'`));
        continue;
      }
      if (name.length > 28) errors.push(at(lineNo, `chain name '${name}' is longer than 28 characters`));
      const builtin = isBuiltinChain(table.name, name);
      if (builtin && policy === '-') errors.push(at(lineNo, `built-in chain ${name} needs a policy, not '-'`));
      if (!builtin && policy !== '-') errors.push(at(lineNo, `user chain ${name} cannot have a policy ('${policy}')`));
      const counters = parts[2] === undefined ? null : parseCounters(parts[2]);
      if (parts[2] !== undefined && counters === null) errors.push(at(lineNo, `'${parts[2]}': bad counters, expected [packets:bytes]`));
      const existing = table.chains.get(name);
      if (existing) {
        existing.policy = builtin ? policy : null;
        existing.rules = []; // a chain line flushes the chain, as in iptables-restore
        existing.line = lineNo;
      } else {
        table.chains.set(name, { name, policy: builtin ? policy : null, counters, line: lineNo, rules: [] });
      }
      continue;
    }
    let args: string[];
    try {
      args = splitArgs(line);
    } catch (e) {
      errors.push(at(lineNo, (e as Error).message));
      continue;
    }
    let counters: Rule['counters'] = null;
    if (args[0]?.startsWith('[')) {
      counters = parseCounters(args[0]);
      if (!counters) {
        errors.push(at(lineNo, `'${args[0]}': bad counters, expected [packets:bytes]`));
        continue;
      }
      args = args.slice(1);
    }
    const cmd = args[0];
    const chainName = args[1];
    if (chainName === undefined) {
      errors.push(at(lineNo, `'${line.slice(0, 40)}': expected a command and a chain`));
      continue;
    }
    try {
      switch (cmd) {
        case '-A':
        case '--append':
        case '-I':
        case '--insert': {
          let rest = args.slice(2);
          let position = -1;
          if ((cmd === '-I' || cmd === '--insert') && /^[0-9]+$/.test(rest[0] ?? '')) {
            position = Number(rest[0]) - 1;
            rest = rest.slice(1);
          } else if (cmd === '-I' || cmd === '--insert') {
            position = 0;
          }
          let chain = table.chains.get(chainName);
          if (!chain) {
            if (isBuiltinChain(table.name, chainName)) {
              chain = { name: chainName, policy: 'ACCEPT', counters: null, line: 0, rules: [] };
              table.chains.set(chainName, chain);
            } else {
              errors.push(at(lineNo, `chain '${chainName}' is not declared (':${chainName} - [0:0]') in table ${table.name}`));
              continue;
            }
          }
          const rule = parseRule(rest, { line: lineNo, text: raw, table: table.name, chain: chainName, counters }, table.chains, ctx);
          if (position < 0 || position >= chain.rules.length) chain.rules.push(rule);
          else chain.rules.splice(position, 0, rule);
          break;
        }
        case '-N':
        case '--new-chain':
          if (table.chains.has(chainName)) errors.push(at(lineNo, `chain '${chainName}' already exists`));
          else table.chains.set(chainName, { name: chainName, policy: null, counters: null, line: lineNo, rules: [] });
          break;
        case '-X':
        case '--delete-chain':
          if (!table.chains.delete(chainName)) errors.push(at(lineNo, `chain '${chainName}' does not exist`));
          break;
        case '-F':
        case '--flush': {
          const chain = table.chains.get(chainName);
          if (!chain) errors.push(at(lineNo, `chain '${chainName}' does not exist`));
          else chain.rules = [];
          break;
        }
        default:
          errors.push(at(lineNo, `'${cmd}': unsupported command (expected -A, -I, -N, -X or -F)`));
      }
    } catch (e) {
      if (e instanceof RuleError) errors.push(at(lineNo, e.message));
      else throw e;
    }
  }
  if (table) errors.push({ line: tableLine, message: `table '${table.name}' has no COMMIT` });
  return { tables, errors, ipv6: ctx.ipv6, family };
}

/** Every rule of a table in chain order (for tests and tools). */
export function tableRules(parsed: ParsedIptables, table: string): Rule[] {
  const t = parsed.tables.get(table);
  if (!t) return [];
  const out: Rule[] = [];
  for (const c of t.chains.values()) for (const r of c.rules) out.push(r);
  return out;
}
