/**
 * The TUN addon's offload and persistence calls against the real kernel, in a
 * namespace of its own: TUNSETPERSIST keeps the device after its fd closes,
 * TUNSETOFFLOAD is answered with the offloads the kernel took.
 */
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { ip, netnsSkipReason, nsExec, testPrefix, withNetns } from './helpers.ts';

const TUN_MODULE = fileURLToPath(new URL('../../dataplane/tun/index.ts', import.meta.url));

/** Run an ES module body inside ns with `TunDevice` etc. imported; it prints one JSON line. */
async function inNs(ns: string, body: string): Promise<any> {
  const code = `import * as tun from ${JSON.stringify(TUN_MODULE)};\n${body}`;
  const r = await nsExec(ns, [process.execPath, '--import', 'tsx', '--input-type=module', '-e', code], { timeoutMs: 20_000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`the script in ${ns} printed no JSON (exit ${r.code}): ${r.stderr || r.stdout}`);
  }
}

function linkExists(ns: string, name: string): boolean {
  try {
    ip(['-n', ns, 'link', 'show', name]);
    return true;
  } catch {
    return false;
  }
}

const skip = netnsSkipReason({ tun: true });
if (skip) {
  t.plan(0, `TUN offload tests skipped: ${skip}`);
} else {
  const ns = testPrefix('offtun');
  withNetns(t, [ns]);

  t.test('persist(true) keeps the device after its fd is closed; persist(false) lets it go', async (t) => {
    const on = await inNs(ns, `const d = tun.TunDevice.open('tpp0'); d.persist(true); d.close(); console.log(JSON.stringify({ ok: true }));`);
    t.same(on, { ok: true });
    t.ok(linkExists(ns, 'tpp0'), 'the device outlives the process that made it persistent');
    const off = await inNs(ns, `const d = tun.TunDevice.open('tpp0'); d.persist(false); d.close(); console.log(JSON.stringify({ ok: true }));`);
    t.same(off, { ok: true });
    t.notOk(linkExists(ns, 'tpp0'), 'without persistence it goes with its last fd');
    const bad = await inNs(ns, `const d = tun.TunDevice.open('tpp1'); try { d.persist('yes'); } catch (e) { console.log(JSON.stringify({ message: e.message })); }`);
    t.match(bad.message, /on must be a boolean/);
  });

  t.test('enableOffloads takes what the kernel gives and says so; readPacked reads into one buffer', async (t) => {
    const r = await inNs(ns, `
      const d = tun.TunDevice.open('tpo0', { vnetHdr: true });
      const got = d.enableOffloads();
      const buf = new Uint8Array(200000), offs = new Uint32Array(8), lens = new Uint32Array(8);
      const n = d.readPacked(buf, 8, 640, tun.MAX_OFFLOAD_PACKET, offs, lens);
      let tooBig = '';
      try { d.readPacked(new Uint8Array(1000), 8, 640, tun.MAX_OFFLOAD_PACKET, offs, lens); } catch (e) { tooBig = e.message; }
      d.setOffload(0);
      d.close();
      const plain = tun.TunDevice.open('tpo1');
      plain.setOffload(0); // clearing works on a device opened without the header
      plain.close();
      console.log(JSON.stringify({ got, n, vnet: d.vnetHeaderSize, tooBig }));`);
    t.equal(r.vnet, 10);
    t.ok(r.got.on.includes('csum') && r.got.on.includes('tso4') && r.got.on.includes('tso6'), `on: ${r.got.on.join(', ')}; refused: ${r.got.refused.join(', ') || 'none'}`);
    const [maj, min] = (await import('node:os')).release().split('.').map(Number);
    if (maj > 6 || (maj === 6 && min >= 2)) t.ok(r.got.on.includes('uso4'), 'USO on a kernel >= 6.2');
    t.equal(r.n, 0, 'nothing queued on a device that is down');
    t.match(r.tooBig, /reserve <= buf.byteLength/, 'a buffer smaller than one largest packet is refused with a reason');
  });
}
