// The dedup choice (src/migrator/dedup/common/choice.ts): on and off are obeyed; auto uses dedup exactly
// when the transport is DEDUP_SPEED_MARGIN times faster than the link (or the move's cap), and stays off
// when either figure is missing.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chooseDedup, DEDUP_SPEED_MARGIN, formatBitRate } from '../../src/migrator/dedup/common/choice.ts';

const M = 1e6;

describe('dedup choice', () => {
  test('on and off are obeyed whatever was measured', () => {
    assert.equal(chooseDedup({ mode: 'on', linkBitsPerSecond: 10e9, senderBitsPerSecond: 1 }).use, true);
    assert.equal(chooseDedup({ mode: 'off', linkBitsPerSecond: 1, senderBitsPerSecond: 10e9 }).use, false);
    assert.match(chooseDedup({ mode: 'off' }).reason, /^off/);
  });

  test('auto: on when the link is the bottleneck by the margin, off otherwise', () => {
    const slow = chooseDedup({ mode: 'auto', linkBitsPerSecond: 95 * M, senderBitsPerSecond: 1400 * M });
    assert.equal(slow.use, true);
    assert.equal(slow.reason, 'auto: on, the link is the bottleneck (link 95 Mbit/s, dedup 1.40 Gbit/s on this site)');
    const fast = chooseDedup({ mode: 'auto', linkBitsPerSecond: 4.4e9, senderBitsPerSecond: 1300 * M });
    assert.equal(fast.use, false);
    assert.match(fast.reason, /^auto: off, dedup would be the bottleneck \(link 4.40 Gbit\/s, dedup 1.30 Gbit\/s on this site\)$/);
    // The boundary: exactly the margin is enough; just under it is not.
    assert.equal(chooseDedup({ mode: 'auto', linkBitsPerSecond: 100 * M, senderBitsPerSecond: DEDUP_SPEED_MARGIN * 100 * M }).use, true);
    assert.equal(chooseDedup({ mode: 'auto', linkBitsPerSecond: 100 * M, senderBitsPerSecond: DEDUP_SPEED_MARGIN * 100 * M - 1 }).use, false);
  });

  test('auto: the move\'s bandwidth cap counts as the link when it is slower', () => {
    const capped = chooseDedup({ mode: 'auto', linkBitsPerSecond: 4.4e9, senderBitsPerSecond: 1300 * M, capBytesPerSecond: (40 * M) / 8 });
    assert.equal(capped.use, true);
    assert.match(capped.reason, /link 40 Mbit\/s \(the move's bandwidth cap\)/);
    assert.equal(chooseDedup({ mode: 'auto', linkBitsPerSecond: 50 * M, senderBitsPerSecond: 1300 * M, capBytesPerSecond: 1e9 }).reason.includes('cap'), false);
    // Unmeasured link, a cap: the cap is what is known of the link.
    assert.equal(chooseDedup({ mode: 'auto', senderBitsPerSecond: 1300 * M, capBytesPerSecond: (40 * M) / 8 }).use, true);
  });

  test('auto: off, and why, when a figure is missing', () => {
    assert.deepEqual(chooseDedup({ mode: 'auto', senderBitsPerSecond: 1300 * M }), { use: false, reason: 'auto: off, the link to the peer could not be measured' });
    assert.deepEqual(chooseDedup({ mode: 'auto', linkBitsPerSecond: 95 * M }), { use: false, reason: 'auto: off, the dedup transport could not be measured on this machine' });
    assert.equal(chooseDedup({ mode: 'auto', linkBitsPerSecond: 0, senderBitsPerSecond: 1 }).use, false);
  });

  test('bit rates read as people write them', () => {
    assert.equal(formatBitRate(95.4 * M), '95 Mbit/s');
    assert.equal(formatBitRate(1.5e9), '1.50 Gbit/s');
  });
});
