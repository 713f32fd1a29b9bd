/**
 * SVG charts of bench/results/e2e.json, drawn with Vega-Lite (compiled to a
 * Vega spec, rendered headless by vega's View.toSVG — no browser, no canvas):
 *
 *   e2e-new-flow-rtt.svg   new-flow RTT p50 (one request at a time) vs services, last service, log axes
 *   e2e-new-flows.svg      new flows/s (K in flight) vs services, last service, log axes
 *   e2e-load-time.svg      time to load the rule set vs services, log axes
 *
 * One line per mode; traffic from outside the pod CIDR (masquerade applies).
 *
 *   node --import tsx bench/charts.ts [bench/results/e2e.json] [OUT_DIR]
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';

interface ChartRecord {
  mode: string;
  services: number;
  target: string;
  source: string;
  status: string;
  loadMs: number | null;
  newFlowsPerSec: number | null;
  newFlowRttP50Us: number | null;
}

interface ChartReport {
  results: ChartRecord[];
  machine?: string;
}

export const CHART_FILES = ['e2e-new-flow-rtt.svg', 'e2e-new-flows.svg', 'e2e-load-time.svg'];

const MODE_ORDER = ['iptables-legacy', 'iptables-nft', 'nftables', 'tunproxy'];
const MODE_COLORS = ['#d62728', '#ff7f0e', '#2ca02c', '#1f77b4'];

function lineChart(title: string, yTitle: string, values: Array<{ mode: string; services: number; value: number }>): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, fontSize: 14 },
    width: 560,
    height: 320,
    background: 'white',
    data: { values },
    mark: { type: 'line', point: true, strokeWidth: 2 },
    encoding: {
      x: { field: 'services', type: 'quantitative', scale: { type: 'log' }, title: 'services (log scale)', axis: { format: '~s' } },
      y: { field: 'value', type: 'quantitative', scale: { type: 'log' }, title: yTitle, axis: { format: '~s' } },
      color: { field: 'mode', type: 'nominal', title: 'mode', scale: { domain: MODE_ORDER, range: MODE_COLORS } },
      tooltip: [{ field: 'mode' }, { field: 'services' }, { field: 'value' }],
    },
  };
}

async function toSvg(spec: TopLevelSpec): Promise<string> {
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

function series(report: ChartReport, pick: (r: ChartRecord) => number | null, target: string) {
  const out: Array<{ mode: string; services: number; value: number }> = [];
  for (const r of report.results) {
    if (r.status !== 'ok' || r.target !== target || r.source !== 'outside') continue;
    const v = pick(r);
    if (v !== null && v > 0) out.push({ mode: r.mode, services: r.services, value: v });
  }
  return out.sort((a, b) => a.services - b.services);
}

/** The three charts as SVG text, by file name. */
export async function chartSvgs(report: ChartReport): Promise<Record<string, string>> {
  return {
    'e2e-new-flow-rtt.svg': await toSvg(lineChart('New-flow RTT p50 vs services (last service of the chain order)', 'RTT p50, µs (log scale)', series(report, (r) => r.newFlowRttP50Us, 'last'))),
    'e2e-new-flows.svg': await toSvg(lineChart('New flows per second vs services (last service)', 'new flows/s (log scale)', series(report, (r) => r.newFlowsPerSec, 'last'))),
    'e2e-load-time.svg': await toSvg(lineChart('Time to load the whole rule set vs services', 'load time, ms (log scale)', series(report, (r) => r.loadMs, 'first'))),
  };
}

/** Write the charts of `report` into dir. */
export async function renderCharts(report: ChartReport, dir: string): Promise<string[]> {
  const svgs = await chartSvgs(report);
  const written: string[] = [];
  for (const [name, svg] of Object.entries(svgs)) {
    writeFileSync(join(dir, name), svg);
    written.push(join(dir, name));
  }
  return written;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const here = dirname(fileURLToPath(import.meta.url));
  const file = process.argv[2] ?? join(here, 'results', 'e2e.json');
  const out = process.argv[3] ?? dirname(file);
  renderCharts(JSON.parse(readFileSync(file, 'utf8')) as ChartReport, out)
    .then((w) => console.log(`written: ${w.join(', ')}`))
    .catch((e) => {
      console.error(`charts: ${(e as Error).message}`);
      process.exitCode = 1;
    });
}
