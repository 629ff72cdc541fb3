import { measureSenderThroughput } from '/work/main/src/migrator/dedup/calibrate.ts';
import { startTestSites } from '/work/main/test/support/link-testing.ts';
import { exposeLinkProbe, probeLink } from '/work/main/src/migrator/link/probe.ts';
for (let i = 0; i < 4; i++) { const t0 = performance.now(); const r = await measureSenderThroughput(); console.log('sender Mbit/s', Math.round(r / 1e6), 'took', Math.round(performance.now() - t0), 'ms'); }
const sites = await startTestSites();
const { edge, core } = await sites.connect();
exposeLinkProbe(core); exposeLinkProbe(edge);
for (let i = 0; i < 3; i++) { const p = await probeLink(edge); console.log('probe edge->core', Math.round(p.bitsPerSecond / 1e6), 'Mbit/s', p.bytes, Math.round(p.ms)); }
for (let i = 0; i < 2; i++) { const p = await probeLink(core); console.log('probe core->edge', Math.round(p.bitsPerSecond / 1e6), 'Mbit/s', p.bytes, Math.round(p.ms)); }
await sites.dispose();
