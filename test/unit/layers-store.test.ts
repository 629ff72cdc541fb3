// The layer store on real qcow2 files (qemu-img, no VM): freeze, chains, compaction keeps the
// disk's content, garbage collection, checksums independent of file layout, corruption detection.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { access, mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LayerStore, LayerStoreError, mergedLayerId } from '../../src/migrator/layers/store.ts';
import { layerChecksum } from '../../src/migrator/layers/checksum.ts';
import { layerMap } from '../../src/migrator/layers/qemu-img.ts';
import { InvalidIdError } from '../../src/migrator/layers/common/ids.ts';

const run = promisify(execFile);
const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;
const SIZE = 8 * 1024 * 1024;

async function io(file: string, ...commands: string[]): Promise<void> {
  await run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
}

describe('layer store', { skip: hasQemuImg ? false : 'qemu-img is not installed' }, () => {
  let dir: string;
  let store: LayerStore;
  let top: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sb-layers-'));
    store = await LayerStore.open(join(dir, 'layers'));
    top = join(dir, 'vms', 'v', 'disk.qcow2');
    await mkdir(join(dir, 'vms', 'v'), { recursive: true });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Writes into the VM's top, freezes it as `id` and starts a new top over it. */
  async function layer(id: string, ...writes: string[]): Promise<void> {
    const chain = store.chainOf('v');
    await io(top, ...writes);
    await store.freeze(top, { id, parent: chain.at(-1) ?? null, leaves: [id] });
    await store.setChain('v', [...chain, id]);
    await store.createTop(top, { virtualSize: SIZE, over: id });
  }

  test('freezing tops builds a chain whose files name their parents relative to by-id/', async () => {
    await store.createTop(top, { virtualSize: SIZE, over: null });
    await layer('l1', 'write -P 0x11 0 2M');
    await layer('l2', 'write -P 0x22 64k 64k', 'write -z 1M 64k');
    await layer('l3', 'write -P 0x33 128k 192k');
    await layer('l4', 'write -P 0x44 4M 64k');
    assert.deepEqual(store.chainOf('v'), ['l1', 'l2', 'l3', 'l4']);
    assert.deepEqual(store.resolve('l4'), ['l1', 'l2', 'l3', 'l4']);
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', store.layerPath('l3')])).stdout) as { 'backing-filename': string };
    assert.equal(info['backing-filename'], '../by-id/l2.qcow2');
    const l2 = store.get('l2');
    assert.match(l2?.checksum ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(l2?.refs, ['vm:v']);
    assert.deepEqual(store.describeChain('v').map((d) => d.leaves), [['l1'], ['l2'], ['l3'], ['l4']]);
  });

  test('freeze is idempotent, and an id is never reused for other content', async () => {
    await store.freeze(store.layerPath('l4'), { id: 'l4', parent: 'l3', leaves: ['l4'] });
    await assert.rejects(store.freeze(top, { id: 'l4', parent: 'l2', leaves: ['l4'] }), LayerStoreError);
  });

  test('compaction merges the two oldest layers above the bottom and keeps the disk content', async () => {
    const before = join(dir, 'before.raw');
    await run('qemu-img', ['convert', '-O', 'raw', top, before]);
    const report = await store.compact('v', { maxDepth: 3, top });
    const merged = mergedLayerId('l2', 'l3');
    assert.deepEqual(report.steps, [{ lower: 'l2', upper: 'l3', merged }]);
    assert.deepEqual(store.chainOf('v'), ['l1', merged, 'l4']);
    assert.deepEqual(store.get(merged)?.leaves, ['l2', 'l3']);
    assert.equal(store.get('l4')?.parent, merged);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', before, top]);
    // The old layers are unreferenced now: gc removes them, and nothing in use.
    assert.deepEqual((await store.gc()).sort(), ['l2', 'l3']);
    await assert.rejects(access(store.layerPath('l2')));
    await access(store.layerPath('l1'));
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', before, top]);
    // Verification still passes after the backing-name rewrite of l4 (checksums cover content only).
    assert.equal((await store.verify('l4', { force: true })).ok, true);
  });

  test('a layer pinned by an incoming migration survives gc', async () => {
    await store.createPending('mig-1', { virtualSize: SIZE, over: 'l1' });
    await store.freeze(store.pendingPath('mig-1'), { id: 'orphan', parent: 'l1', leaves: ['orphan'] });
    await store.pin('migration:mig-1', ['orphan']);
    assert.deepEqual(await store.gc(), []);
    await store.unpin('migration:mig-1');
    assert.deepEqual(await store.gc(), ['orphan']);
  });

  test('the checksum covers content, not file layout', async () => {
    const a = join(dir, 'a.qcow2');
    const b = join(dir, 'b.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', a, String(SIZE)]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', b, String(SIZE)]);
    await io(a, 'write -P 0x01 0 64k', 'write -P 0x02 1M 128k', 'write -P 0x00 3M 64k');
    await io(b, 'write -P 0x00 3M 64k', 'write -P 0x02 1M 128k', 'write -P 0x01 0 64k');
    const [ma, mb] = [await layerMap(a), await layerMap(b)];
    assert.notDeepEqual(ma.map((e) => e.offset), mb.map((e) => e.offset), 'the files should be laid out differently');
    assert.equal(await layerChecksum(a), await layerChecksum(b));
    await io(b, 'write -P 0x03 1M 4k');
    assert.notEqual(await layerChecksum(a), await layerChecksum(b));
  });

  test('verification catches a layer whose data changed on disk', async () => {
    const map = (await layerMap(store.layerPath('l1'))).find((e) => e.data && e.offset !== undefined);
    assert.ok(map?.offset !== undefined);
    const handle = await open(store.layerPath('l1'), 'r+');
    await handle.write(Buffer.from([0xff]), 0, 1, map.offset + 100);
    await handle.close();
    const result = await store.verify('l1');
    assert.equal(result.ok, false);
    assert.match(result.reason ?? '', /does not match its checksum/);
  });

  test('ids that could leave the store are refused', async () => {
    assert.throws(() => store.layerPath('../../etc/passwd'), InvalidIdError);
    assert.throws(() => store.pendingPath('a/b'), InvalidIdError);
    await assert.rejects(store.freeze(top, { id: 'ok', parent: null, leaves: ['../x'] }), InvalidIdError);
    await assert.rejects(store.setChain('../v', []), LayerStoreError);
  });

  test('a corrupt index is reported, not silently replaced', async () => {
    const other = join(dir, 'broken');
    await mkdir(other, { recursive: true });
    await writeFile(join(other, 'index.json'), JSON.stringify({ version: 1, layers: { '../x': {} }, chains: {} }));
    await assert.rejects(LayerStore.open(other), /not a valid layer index/);
  });
});
