/**
 * The packet thread's host (control/worker/host.ts) recycles the views of
 * the snapshot before the one in force into the next one (TablesMaterializer's
 * spare) only when no packet can read them any more: a snapshot is in force
 * as soon as it is installed, so the one before the one in force is recycled
 * and the one in force is left alone. A spare made before the packets move
 * (tunproxy run) serves the first change after the start.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { Dataplane } from '../../control/dataplane.ts';
import type { InstallInfo } from '../../control/worker/host.ts';
import { RuleSetHolder } from '../../control/runtime.ts';
import { shareTables } from '../../dataplane/tables-wire.ts';
import type { Tables } from '../../dataplane/tables.ts';
import type { RuleSet } from '../../control/types.ts';
import { KickDevice, twoThreads } from '../support/threads.ts';

const golden = JSON.parse(readFileSync(new URL('../fixtures/iptables/golden-ruleset.json', import.meta.url), 'utf8')) as RuleSet;

/** A rule set of its own for each variant: 300 service ports that differ from every other variant's, after the golden rule set's 10. */
function variant(v: number, n = 300): RuleSet {
  const bulk = Array.from({ length: n }, (_, i) => ({ namespace: 'bulk', name: `s${i}-v${v}`, clusterIP: `10.${100 + v}.${i >> 8}.${i & 255}`, ports: [{ name: 'p', protocol: 'TCP' as const, port: 80 }], endpoints: [{ address: `10.64.2.${(i % 250) + 1}`, ports: { p: 8080 } }] }));
  return { ...golden, services: [...golden.services, ...bulk] } as RuleSet;
}
const text = (tb: Tables): string => tb.services.map((s) => `${s.name} ${s.clusterIP} ${s.port} ${s.cluster?.endpoints.map((e) => e.text).join(',')}`).join('\n');

/** A dataplane behind the two threads' messages; `send(v)` compiles variant v, sends it and answers what the host said of it. */
function lab(t: { teardown(fn: () => void): void }) {
  const dp = new Dataplane({ clock: () => 1000 });
  const { host, remote } = twoThreads(t, dp);
  const infos: InstallInfo[] = [];
  host.onInstalled = (_t, info) => infos.push(info);
  const holder = new RuleSetHolder({ prepare: shareTables });
  const send = async (v: number, n = 300): Promise<InstallInfo> => {
    holder.apply(variant(v, n));
    await remote.sendTables(holder.current!, null);
    return infos[infos.length - 1];
  };
  const attach = () => {
    const dev = new KickDevice();
    const loop = dp.attach(dev, { expiryIntervalMs: 0 });
    t.teardown(() => dp.detach());
    return { dev, loop };
  };
  return { host, holder, send, attach };
}

t.test('views recycled from the snapshot before the one in force, never from the one in force', async (t) => {
  const { holder, send, attach } = lab(t);
  t.match(await send(1), { built: 310, recycled: 0 }, 'the first snapshot: every view made');
  const { dev, loop } = attach();
  const first = loop.applied;

  // each snapshot is in force as soon as it is installed, no packet needed
  t.match(await send(2), { built: 310, recycled: 0 }, 'no spare yet');
  const second = loop.applied;
  t.not(second, first, 'the second is in force at once, without a batch');
  t.equal(second.generation, 2);
  const secondText = text(second);
  t.match(await send(3), { built: 0, recycled: 310 }, 'the first is no longer in force: its views are recycled, none made');
  t.equal(text(second), secondText, 'the second, in force while the third was made, reads as it did');
  const third = loop.applied;
  t.equal(third.generation, 3);
  const thirdText = text(third);
  dev.kick();
  t.equal(loop.applied, third, 'a batch changes nothing');
  t.match(await send(4), { built: 0, recycled: 310 }, 'the second\'s views recycled');
  t.equal(text(third), thirdText, 'the third, in force while the fourth was made, reads as it did');
  t.equal(loop.applied.generation, 4);
  t.equal(text(loop.applied), text(holder.current!), 'the fourth reads as the compiled tables');
});

t.test('a spare made before the packets move: the first change after the start makes no views', async (t) => {
  const { host, holder, send, attach } = lab(t);
  t.equal(host.prepareSpare(), 0, 'nothing installed yet: no spare');
  t.match(await send(1), { built: 310 });
  t.equal(host.prepareSpare(), 310, 'one view per entry of the snapshot in force');
  t.equal(host.prepareSpare(), 0, 'made once');
  const { dev, loop } = attach();
  const first = loop.applied;
  const firstText = text(first);
  t.match(await send(2), { built: 0, recycled: 310 }, 'the first change takes the spare\'s views');
  t.equal(text(first), firstText, 'the snapshot in force while it was made reads as it did');
  dev.kick();
  t.equal(loop.applied.generation, 2);
  t.equal(text(loop.applied), text(holder.current!), 'the second reads as the compiled tables');
  t.match(await send(3), { built: 0, recycled: 310 }, 'the third takes the first\'s');
});

t.test('a snapshot of another length takes the spare\'s array of entries too, cut or grown: no new array on the packet thread', async (t) => {
  const { holder, send, attach } = lab(t);
  await send(1);
  const { loop } = attach();
  const first = loop.applied.services;
  await send(2);
  t.match(await send(3, 301), { built: 1, recycled: 310 }, 'one service more: the first\'s views recycled, one made');
  t.equal(loop.applied.services, first, 'into the first snapshot\'s array, grown by one');
  t.equal(loop.applied.services.length, 311);
  t.equal(text(loop.applied), text(holder.current!), 'reads as the compiled tables');
  const second = (await send(4, 250), loop.applied.services);
  t.equal(second.length, 260, 'fifty services fewer');
  t.equal(text(loop.applied), text(holder.current!), 'reads as the compiled tables');
});
