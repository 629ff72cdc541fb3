// The convergence watch on query-migrate samples recorded from QEMU 7.2 (TCG, 192 MiB guest, the
// demo guest's memory workload dirtying 32 MiB continuously).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { convergenceDecision, DEFAULT_CONVERGENCE, dirtySetByPass, expectedDowntime, sampleOf, type ConvergenceConfig, type ConvergenceState, type MigrationSample } from '../../src/migrator/orchestrator/common/convergence.ts';
import type { MemoryStrategy } from '../../src/migrator/orchestrator/common/types.ts';

type Row = [atMs: number, pass: number, remaining: number, transferred: number, expectedDowntimeMs: number, dirtyPagesRate: number, mbps: number];
const rows = (r: Row[]): MigrationSample[] =>
  r.map(([atMs, dirtySyncCount, remaining, transferred, expectedDowntimeMs, dirtyPagesRate, mbps]) => ({ atMs, status: 'active', dirtySyncCount, remaining, transferred, expectedDowntimeMs, dirtyPagesRate, mbps }));

/** max-bandwidth 24 MiB/s, no XBZRLE, downtime-limit 50 ms: the dirty set stays at ~30 MiB every pass. */
const STALLED = rows([[70,1,216322048,1442580,50,0,0],[332,1,201551872,8489801,50,0,202],[595,1,194584576,15114473,50,0,202],[853,1,186380288,21721370,50,0,196],[1107,1,167833600,27708095,50,0,202],[1378,1,160288768,35267687,50,0,202],[1631,1,154996736,40565975,50,0,202],[1886,1,142991360,47865099,50,0,200],[2145,1,137699328,53163387,50,0,187],[2396,1,87937024,60459478,50,0,198],[2662,1,82644992,65757766,50,0,190],[2921,1,75362304,73058798,50,0,196],[3172,1,69537792,78882416,50,0,200],[3430,1,61988864,85655778,50,0,202],[3694,1,56684544,90954093,50,0,178],[3946,1,34275328,98255610,50,0,202],[4205,1,23363584,104864361,50,0,200],[4463,2,34299904,110849647,50,1900,200],[4715,2,26755072,118409239,1363,1900,202],[4966,2,21725184,123448967,1377,1900,200],[5221,2,14180352,131008559,1363,1900,202],[5473,2,9150464,136048287,1390,1900,198],[5725,2,1605632,143607879,1377,1900,200],[5976,3,30900224,148647624,1362,6012,202],[6229,3,23355392,156207216,1375,6012,200],[6482,3,18325504,161246944,1362,6012,202],[6734,3,10780672,168806536,1403,6012,196],[6985,3,5750784,173846264,1362,6012,202],[7237,4,31805440,181405856,1362,5859,202],[7491,4,26775552,186445584,1361,5859,202],[7742,4,19230720,194005176,1361,5859,202],[8020,4,16191488,197046256,1361,5859,202],[8312,4,8642560,204614056,1361,5859,202],[8563,4,3612672,209653784,1443,5859,190],[8893,5,26820608,219704512,1390,5532,198],[9147,5,21766144,224772968,1362,5532,202],[9403,5,14221312,232332560,1362,5532,202],[9687,5,9191424,237372296,1362,5532,202],[9941,5,1646592,244931888,1362,5532,202],[10193,6,29773824,251149489,1376,6390,200]]);

/** Unlimited bandwidth with XBZRLE, downtime-limit 300 ms: converged in the third pass. */
const CONVERGING = rows([[4,1,216453120,1311252,300,0,0],[272,1,92741632,40194866,300,0,1183],[732,1,63291392,69641241,300,0,728],[994,2,27336704,100976300,300,0,328],[1252,2,15917056,112418284,300,0,338],[1511,3,4280320,129816276,563,10101,488]]);

/** KVM-like by default (throttling available); `tcg` for the TCG rule. */
function config(strategy: MemoryStrategy, downtimeLimitMs: number, accel: 'kvm' | 'tcg' = 'kvm'): ConvergenceConfig {
  return { ...DEFAULT_CONVERGENCE, strategy, downtimeLimitMs, throttleAvailable: accel === 'kvm', downtimeCeilingMs: downtimeLimitMs * 4 };
}
const fresh = { postcopyStarted: false, autoConverge: false, downtimeLimitMs: 50 };

/** Replays samples one by one; returns the first action and the sample index where it came. */
function replay(samples: MigrationSample[], cfg: ConvergenceConfig, state: ConvergenceState = { ...fresh, downtimeLimitMs: cfg.downtimeLimitMs }): { index: number; action: ReturnType<typeof convergenceDecision> } | undefined {
  for (let i = 0; i < samples.length; i++) {
    const action = convergenceDecision(samples.slice(0, i + 1), cfg, state);
    if (action.kind !== 'wait') return { index: i, action };
  }
  return undefined;
}

describe('convergence watch', () => {
  test('pre-copy that converges is left alone', () => {
    assert.equal(replay(CONVERGING, config('precopy', 300)), undefined);
  });

  test('pre-copy that stalls gets auto-converge once the dirty set stops shrinking (pass 4), and only once', () => {
    const first = replay(STALLED, config('precopy', 50));
    assert.ok(first);
    assert.equal(first.action.kind, 'enable-auto-converge');
    assert.equal(STALLED[first.index]?.dirtySyncCount, 4);
    assert.match(first.action.kind === 'enable-auto-converge' ? first.action.reason : '', /not shrinking.*expected downtime 1362 ms > limit 50 ms/);
    assert.equal(replay(STALLED, config('precopy', 50), { ...fresh, autoConverge: true }), undefined);
  });

  test('under TCG (no throttling) a stalled pre-copy raises downtime-limit step by step, up to the ceiling', () => {
    const first = replay(STALLED, config('precopy', 50, 'tcg'));
    assert.equal(first?.action.kind, 'raise-downtime-limit');
    assert.equal(STALLED[first?.index ?? -1]?.dirtySyncCount, 4);
    // The expected downtime is ~1362 ms: the first step goes straight to the ceiling (4 × 50 ms).
    assert.equal(first?.action.kind === 'raise-downtime-limit' && first.action.toMs, 200);
    const belowExpected = replay(STALLED, { ...config('precopy', 50, 'tcg'), downtimeCeilingMs: 5000 });
    assert.equal(belowExpected?.action.kind === 'raise-downtime-limit' && belowExpected.action.toMs, Math.ceil(1362 * 1.25));
    assert.equal(replay(STALLED, config('precopy', 50, 'tcg'), { ...fresh, downtimeLimitMs: 200 }), undefined);
  });

  test('pre-copy with no lever left gives up at maxPasses with an actionable reason (the VM stays at the source)', () => {
    // TCG at the ceiling, and KVM with auto-converge already on: wait until maxPasses, then give up.
    for (const [cfg, state] of [
      [config('precopy', 50, 'tcg'), { ...fresh, downtimeLimitMs: 200 }],
      [config('precopy', 50), { ...fresh, autoConverge: true }],
    ] as const) {
      const r = replay(STALLED, { ...cfg, maxPasses: 6 }, state);
      assert.equal(r?.action.kind, 'give-up');
      assert.equal(STALLED[r?.index ?? -1]?.dirtySyncCount, 6);
      assert.match(r?.action.kind === 'give-up' ? r.action.reason : '', /pre-copy cannot converge.*dirties 25\.0 MiB\/s.*carries 23\.8 MiB\/s.*--strategy hybrid or postcopy/);
    }
  });

  test('hybrid switches to post-copy after its pre-copy pass(es)', () => {
    const r = replay(STALLED, config('hybrid', 50));
    assert.equal(r?.action.kind, 'start-postcopy');
    assert.equal(STALLED[r?.index ?? -1]?.dirtySyncCount, 2);
    const two = replay(STALLED, { ...config('hybrid', 50), hybridPrecopyPasses: 2 });
    assert.equal(STALLED[two?.index ?? -1]?.dirtySyncCount, 3);
  });

  test('hybrid with many pre-copy passes still switches when the migration stalls', () => {
    const r = replay(STALLED, { ...config('hybrid', 50), hybridPrecopyPasses: 100 });
    assert.equal(r?.action.kind, 'start-postcopy');
    assert.equal(STALLED[r?.index ?? -1]?.dirtySyncCount, 4);
  });

  test('post-copy switches at once, and nothing happens after the switch', () => {
    assert.equal(replay(STALLED, config('postcopy', 50))?.index, 0);
    assert.equal(replay(STALLED, config('postcopy', 50), { ...fresh, postcopyStarted: true }), undefined);
  });

  test('a long stall is cut after maxPasses even if the dirty set shrinks slowly', () => {
    // Shrinks 12 % a pass (23 % over two): never called stalled, but it will not finish soon either.
    const slow = rows(Array.from({ length: 12 }, (_, i): Row => [i * 300, i + 1, Math.round(40_000_000 * 0.88 ** i), i * 10_000_000, 2000, 5000, 200]));
    assert.equal(replay(slow, config('precopy', 300)), undefined);
    const r = replay(slow, { ...config('precopy', 300), maxPasses: 10 });
    assert.equal(slow[r?.index ?? -1]?.dirtySyncCount, 10);
  });

  describe('auto (the default towards the core)', () => {
    test('pre-copy that converges is left alone', () => {
      assert.equal(replay(CONVERGING, config('auto', 300, 'tcg')), undefined);
      assert.equal(replay(CONVERGING, config('auto', 300)), undefined);
    });

    test('a guest that outpaces the stream goes to post-copy right after the bulk pass, saying why and for how long', () => {
      // 175 MiB/s dirtied, 39 MiB/s carried since the start (the busy VM on loopback): pass 2 is enough to know.
      const busy = rows([[0,1,200_000_000,1_000_000,300,0,0],[2000,1,60_000_000,80_000_000,300,0,327],[4200,2,67_000_000,172_750_000,1700,44_800,327],[4500,2,60_000_000,185_000_000,1700,44_800,327]]);
      const r = replay(busy, config('auto', 300, 'tcg'));
      assert.equal(r?.action.kind, 'start-postcopy');
      assert.equal(busy[r?.index ?? -1]?.dirtySyncCount, 2);
      assert.match(r?.action.kind === 'start-postcopy' ? r.action.reason : '', /the guest dirties 175\.0 MiB\/s, the stream carries 39\.0 MiB\/s.*: post-copy for ~1\.6 s/);
    });

    test('a stalled pre-copy under TCG goes to post-copy at the first pass that did not shrink', () => {
      const r = replay(STALLED, config('auto', 50, 'tcg'));
      assert.equal(r?.action.kind, 'start-postcopy');
      assert.equal(STALLED[r?.index ?? -1]?.dirtySyncCount, 3);
    });

    test('under KVM it throttles first, gives the throttle two passes, then post-copy', () => {
      const first = replay(STALLED, config('auto', 50));
      assert.equal(first?.action.kind, 'enable-auto-converge');
      assert.equal(STALLED[first?.index ?? -1]?.dirtySyncCount, 3);
      const throttled = { ...fresh, autoConverge: true, autoConvergeAtPass: 3 };
      const next = replay(STALLED, config('auto', 50), throttled);
      assert.equal(next?.action.kind, 'start-postcopy');
      assert.equal(STALLED[next?.index ?? -1]?.dirtySyncCount, 5);
    });

    test('with post-copy forbidden: under TCG a longer pause up to the ceiling, then it gives up naming the setting', () => {
      const noPostcopy = { ...config('auto', 50, 'tcg'), postcopyAllowed: false };
      assert.equal(replay(STALLED, noPostcopy)?.action.kind, 'raise-downtime-limit');
      const r = replay(STALLED, { ...noPostcopy, maxPasses: 6 }, { ...fresh, downtimeLimitMs: 200 });
      assert.equal(r?.action.kind, 'give-up');
      assert.equal(STALLED[r?.index ?? -1]?.dirtySyncCount, 6);
      assert.match(r?.action.kind === 'give-up' ? r.action.reason : '', /post-copy .* is off in the settings \(migration\.postcopyToCore\)/);
    });
  });

  test('not active: wait', () => {
    assert.deepEqual(convergenceDecision([{ ...(STALLED.at(-1) as MigrationSample), status: 'pre-switchover' }], config('postcopy', 50), fresh), { kind: 'wait' });
  });

  test('helpers: dirty set per pass, expected downtime, samples from query-migrate', () => {
    const byPass = dirtySetByPass(STALLED);
    assert.equal(byPass.get(1), 216322048);
    assert.equal(byPass.get(3), 30900224);
    assert.equal(expectedDowntime({ ...(STALLED[0] as MigrationSample), expectedDowntimeMs: undefined, remaining: 25_000_000, mbps: 200 }), 1000);
    assert.equal(sampleOf({}, 0), undefined);
    const s = sampleOf({ status: 'active', 'expected-downtime': 12, ram: { transferred: 1, remaining: 2, total: 3, duplicate: 0, skipped: 0, normal: 0, 'normal-bytes': 0, 'dirty-pages-rate': 4, mbps: 5, 'dirty-sync-count': 6, 'postcopy-requests': 0, 'page-size': 4096, 'multifd-bytes': 0, 'pages-per-second': 0, 'precopy-bytes': 0, 'downtime-bytes': 0, 'postcopy-bytes': 0, 'dirty-sync-missed-zero-copy': 0 } }, 7);
    assert.deepEqual(s, { atMs: 7, status: 'active', dirtySyncCount: 6, remaining: 2, transferred: 1, expectedDowntimeMs: 12, dirtyPagesRate: 4, mbps: 5 });
  });
});
