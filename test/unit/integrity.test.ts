import { test } from 'node:test';
import assert from 'node:assert/strict';
import { emptyIntegrity, foldIntegrity } from '../../src/migrator/qemu/common/integrity.ts';
import { parseGuestLine } from '../../src/shared/guest-protocol.ts';

const fold = (lines: string[]) => lines.map(parseGuestLine).reduce(foldIntegrity, emptyIntegrity());

test('heartbeats accumulate and keep the guest\'s cumulative violation count', () => {
  const s = fold([
    '{"type":"ready","uptime_ms":1500,"mem_mib":64,"disk_blocks":4096}',
    '{"type":"mem-heartbeat","uptime_ms":2500,"pass":10,"mib":64,"violations":0}',
    '{"type":"disk-heartbeat","uptime_ms":2600,"pass":1,"blocks":4096,"verified":4096,"violations":0}',
    '{"type":"mem-heartbeat","uptime_ms":3500,"pass":21,"mib":64,"violations":0}',
  ]);
  assert.equal(s.ready, true);
  assert.equal(s.uptimeMs, 3500);
  assert.deepEqual(s.memory, { heartbeats: 2, pass: 21, violations: 0 });
  assert.deepEqual(s.disk, { heartbeats: 1, pass: 1, violations: 0 });
  assert.equal(s.rebooted, false);
});

test('violation lines are counted once even when the next heartbeat repeats the total', () => {
  const s = fold([
    '{"type":"mem-violation","uptime_ms":4000,"page":8192,"expected":7,"found":248}',
    '{"type":"mem-heartbeat","uptime_ms":4100,"pass":30,"mib":64,"violations":1}',
    '{"type":"disk-violation","uptime_ms":4200,"block":2,"reason":"checksum"}',
  ]);
  assert.equal(s.memory.violations, 1);
  assert.equal(s.memory.lastViolation, 'page 8192: expected 7, found 248');
  assert.equal(s.disk.violations, 1);
  assert.equal(s.disk.lastViolation, 'block 2: checksum');
});

test('a heartbeat seen after attaching late carries the violations that happened before', () => {
  const s = fold(['{"type":"disk-heartbeat","uptime_ms":9000,"pass":5,"blocks":4096,"verified":20000,"violations":3}']);
  assert.equal(s.disk.violations, 3);
});

test('one process\'s uptime going backwards means the guest rebooted', () => {
  const s = fold([
    '{"type":"mem-heartbeat","uptime_ms":50000,"pass":10,"mib":64,"violations":0}',
    '{"type":"ready","uptime_ms":1200,"mem_mib":64,"disk_blocks":4096}',
    '{"type":"mem-heartbeat","uptime_ms":2200,"pass":1,"mib":64,"violations":0}',
  ]);
  assert.equal(s.rebooted, true);
  assert.equal(s.uptimeMs, 50000);
});

test('a second ready means the guest rebooted', () => {
  const s = fold([
    '{"type":"ready","uptime_ms":1200,"mem_mib":64,"disk_blocks":4096}',
    '{"type":"ready","uptime_ms":1300,"mem_mib":64,"disk_blocks":4096}',
  ]);
  assert.equal(s.rebooted, true);
});

test('two processes\' lines arriving out of uptime order are not a reboot', () => {
  // sbmem read the clock, then stalled on a post-copy page fault while sbdisk wrote a newer line.
  const s = fold([
    '{"type":"disk-heartbeat","uptime_ms":61000,"pass":5,"blocks":4096,"verified":20000,"violations":0}',
    '{"type":"mem-heartbeat","uptime_ms":58000,"pass":10,"mib":64,"violations":0}',
  ]);
  assert.equal(s.rebooted, false);
  assert.equal(s.uptimeMs, 61000);
});

test('a crunch-done older than sbctl\'s latest line is its own writer, not a reboot', () => {
  // crunch read the clock as it finished, then sbctl answered a ping before crunch's line went out.
  const s = fold([
    '{"type":"pong","uptime_ms":70000}',
    '{"type":"crunch-done","uptime_ms":69990,"pid":211,"work":500,"iterations":500,"elapsed_ms":1000}',
  ]);
  assert.equal(s.rebooted, false);
  assert.equal(s.uptimeMs, 70000);
});

test('garbage lines change nothing', () => {
  assert.deepEqual(fold(['', 'not json', '{"type":"mem-heartbeat"', '[1,2]']), emptyIntegrity());
});
