const which = process.argv[2];
if (which === 'dp') await import('/work/wt-control/control/dataplane.ts');
else if (which === 'run') await import('/work/wt-control/control/commands/run.ts');
else await import('/work/wt-control/dataplane/pipeline.ts');
(globalThis as any).gc?.(); (globalThis as any).gc?.();
console.log(which, (process.memoryUsage().heapUsed / 1e6).toFixed(1), 'MB');
