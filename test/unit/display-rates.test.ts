import { test } from 'node:test';
import assert from 'node:assert/strict';
import { displayRates, UNAVAILABLE_DISPLAY } from '../../src/interaction-detect/common/display-rates.ts';
import type { DisplayActivity } from '../../src/shared/display.ts';

function record(overrides: Partial<DisplayActivity> = {}): DisplayActivity {
  return {
    at: 0, intervalMs: 250, keyEvents: 0, pointerEvents: 0, fbUpdates: 0, changedPixels: 0,
    width: 640, height: 480, latencyMs: [], viewers: 1, upstream: 'connected', ...overrides,
  };
}

test('no records means the display sensors are unavailable, not idle', () => {
  assert.deepEqual(displayRates([]), UNAVAILABLE_DISPLAY);
  assert.deepEqual(displayRates([record({ intervalMs: 0 })]), UNAVAILABLE_DISPLAY);
});

test('counts become rates over the records\' combined interval', () => {
  const rates = displayRates([
    record({ keyEvents: 4, pointerEvents: 10, fbUpdates: 2, changedPixels: 640 * 480 }),
    record({ keyEvents: 2, fbUpdates: 1, changedPixels: (640 * 480) / 2 }),
  ]);
  assert.equal(rates.keysPerS, 12); // 6 events over 0.5 s
  assert.equal(rates.pointerPerS, 20);
  assert.equal(rates.fbUpdatesPerS, 6);
  assert.equal(rates.screenChangePerS, 3); // 1.5 screens over 0.5 s
});

test('display rates cover only the time the gateway had its VNC server; input counts throughout', () => {
  const rates = displayRates([
    record({ keyEvents: 5, upstream: 'reconnecting', fbUpdates: 0 }),
    record({ keyEvents: 5, fbUpdates: 2, changedPixels: 640 * 480 }),
  ]);
  assert.equal(rates.keysPerS, 20);
  assert.equal(rates.fbUpdatesPerS, 8);
  assert.equal(rates.screenChangePerS, 4);
  const away = displayRates([record({ keyEvents: 1, upstream: 'unreachable' }), record({ width: 0, height: 0, upstream: 'connected' })]);
  assert.equal(away.keysPerS, 2);
  assert.equal(away.fbUpdatesPerS, null);
  assert.equal(away.screenChangePerS, null);
});
