// The pure planner: which layers the destination holds (by leaves, across compaction), what the
// disk sync copies, and the compaction rule.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chainLeaves, compactionPlan, fullLayerId, matchChain, planDiskSync, type HeldLayer } from '../../src/migrator/layers/common/planner.ts';
import type { LayerDescriptor } from '../../src/migrator/layers/common/model.ts';

const SIZE = 64 * 1024 * 1024;
const sum = (c: string): string => `sha256:${c.repeat(64)}`;

function desc(id: string, leaves = [id], checksum: string | null = null): LayerDescriptor {
  return { id, leaves, checksum, virtualSize: SIZE };
}
function held(id: string, parent: string | null, leaves = [id], checksum: string | null = null, virtualSize = SIZE): HeldLayer {
  return { id, parent, leaves, checksum, virtualSize };
}
const join = (a: string, b: string): string => `${a}${b}`;

describe('matchChain (destination side)', () => {
  test('an empty chain is always held', () => {
    assert.deepEqual(matchChain([], []), { complete: true, layers: [], leavesCovered: 0, checksumMismatch: [] });
  });

  test('the same layers under the same ids', () => {
    const m = matchChain([desc('a'), desc('b')], [held('a', null), held('b', 'a'), held('x', null)]);
    assert.deepEqual(m, { complete: true, layers: ['a', 'b'], leavesCovered: 2, checksumMismatch: [] });
  });

  test('a destination that compacted the chain differently still matches, by leaves', () => {
    const source = [desc('l1'), desc('l2'), desc('l3'), desc('l4')];
    const dest = [held('l1', null), held('m23', 'l1', ['l2', 'l3']), held('l4', 'm23')];
    assert.deepEqual(matchChain(source, dest).layers, ['l1', 'm23', 'l4']);
    // ...and the other way round: the source compacted, the destination did not.
    const compactedSource = [desc('l1'), desc('m23', ['l2', 'l3']), desc('l4')];
    assert.deepEqual(matchChain(compactedSource, [held('l1', null), held('l2', 'l1'), held('l3', 'l2'), held('l4', 'l3')]).layers, ['l1', 'l2', 'l3', 'l4']);
  });

  test('a flattened (full-copy) layer matches the chain it stands for', () => {
    const m = matchChain([desc('f-l3', ['l1', 'l2', 'l3'])], [held('l1', null), held('l2', 'l1'), held('l3', 'l2')]);
    assert.equal(m.complete, true);
    assert.deepEqual(m.layers, ['l1', 'l2', 'l3']);
  });

  test('prefers the shallower of two equivalent chains', () => {
    const dest = [held('l1', null), held('l2', 'l1'), held('l3', 'l2'), held('m23', 'l1', ['l2', 'l3'])];
    assert.deepEqual(matchChain([desc('l1'), desc('l2'), desc('l3')], dest).layers, ['l1', 'm23']);
  });

  test('a missing layer in the middle: no match, the covered prefix is reported', () => {
    const m = matchChain([desc('a'), desc('b'), desc('c')], [held('a', null), held('c', 'b')]);
    assert.equal(m.complete, false);
    assert.deepEqual(m.layers, []);
    assert.equal(m.leavesCovered, 1);
  });

  test('more content than the chain (a layer above it) is not a match', () => {
    assert.equal(matchChain([desc('a')], [held('ab', null, ['a', 'b'])]).complete, false);
  });

  test('a checksum that disagrees for the same id disqualifies the layer', () => {
    const m = matchChain([desc('a', ['a'], sum('1')), desc('b', ['b'], sum('2'))], [held('a', null, ['a'], sum('1')), held('b', 'a', ['b'], sum('3'))]);
    assert.equal(m.complete, false);
    assert.deepEqual(m.checksumMismatch, ['b']);
  });

  test('a layer of another virtual size, or with a broken or cyclic ancestry, does not count', () => {
    assert.equal(matchChain([desc('a')], [held('a', null, ['a'], null, SIZE * 2)]).complete, false);
    assert.equal(matchChain([desc('a'), desc('b')], [held('b', 'a')]).complete, false);
    assert.equal(matchChain([desc('a'), desc('b')], [held('a', 'b'), held('b', 'a')]).complete, false);
  });
});

describe('planDiskSync (source side)', () => {
  test('no layers below the top: the top alone, standalone', () => {
    const p = planDiskSync([], { heldLayers: [], complete: true }, 'l-new');
    assert.deepEqual([p.mode, p.backingLayer, p.received], ['top', null, { id: 'l-new', parent: null, leaves: ['l-new'] }]);
  });

  test('everything held: mirror the top over the destination\'s top-most held layer', () => {
    const p = planDiskSync([desc('l1'), desc('l2'), desc('l3')], { heldLayers: ['l1', 'm23'], complete: true }, 'l4');
    assert.deepEqual([p.mode, p.backingLayer, p.received], ['top', 'm23', { id: 'l4', parent: 'm23', leaves: ['l4'] }]);
  });

  test('something missing: a full copy into a layer that stands for the whole chain', () => {
    const chain = [desc('l1'), desc('m23', ['l2', 'l3'])];
    const p = planDiskSync(chain, { heldLayers: [], complete: false }, 'l4');
    assert.equal(p.mode, 'full');
    assert.equal(p.backingLayer, null);
    assert.deepEqual(p.received, { id: fullLayerId('l4'), parent: null, leaves: ['l1', 'l2', 'l3', 'l4'] });
    assert.notEqual(p.received.id, 'l4');
    assert.deepEqual(chainLeaves(chain), ['l1', 'l2', 'l3']);
  });
});

describe('compactionPlan', () => {
  test('within the bound: nothing to do', () => {
    assert.deepEqual(compactionPlan(['a', 'b', 'c'], 3, join), { steps: [], result: ['a', 'b', 'c'] });
  });

  test('merges the two oldest above the bottom until the bound holds; the bottom is kept', () => {
    const p = compactionPlan(['base', 'a', 'b', 'c', 'd'], 3, join);
    assert.deepEqual(p.steps, [
      { lower: 'a', upper: 'b', merged: 'ab' },
      { lower: 'ab', upper: 'c', merged: 'abc' },
    ]);
    assert.deepEqual(p.result, ['base', 'abc', 'd']);
  });

  test('is a left fold: compacting early or late gives the same chain (so both sites agree)', () => {
    const history = ['base', 'l1', 'l2', 'l3', 'l4', 'l5', 'l6', 'l7'];
    for (const depth of [2, 3, 4]) {
      const once = compactionPlan(history, depth, join).result;
      let incremental: string[] = [];
      for (const layer of history) incremental = compactionPlan([...incremental, layer], depth, join).result;
      assert.deepEqual(incremental, once, `depth ${depth}`);
    }
  });

  test('rejects a bound below 2', () => {
    assert.throws(() => compactionPlan(['a'], 1, join), RangeError);
  });
});
