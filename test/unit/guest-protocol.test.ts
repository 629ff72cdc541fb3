import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ackName, formatGuestCommand, isAckFor, parseGuestLine, type GuestCommand } from '../../src/shared/guest-protocol.ts';

// Lines exactly as the guest programs print them (sbctl, sbmem, sbdisk).
const samples = {
  ready: '{"type":"ready","uptime_ms":4210,"mem_mib":32,"disk_blocks":2048}',
  memHeartbeat: '{"type":"mem-heartbeat","uptime_ms":5210,"pass":1234,"mib":32,"violations":0}',
  memViolation: '{"type":"mem-violation","uptime_ms":6000,"page":4096,"expected":17,"found":238}',
  diskHeartbeat: '{"type":"disk-heartbeat","uptime_ms":5300,"pass":3,"blocks":2048,"verified":4097,"violations":0}',
  diskViolation: '{"type":"disk-violation","uptime_ms":4300,"block":2,"reason":"magic"}',
  ack: '{"type":"ack","cmd":"mem start","ok":true,"detail":"pid 93, sbmem 32"}',
  pong: '{"type":"pong","uptime_ms":7000}',
  error: '{"type":"error","source":"disk","detail":"/dev/vda: No such file or directory"}',
  crunchDone: '{"type":"crunch-done","uptime_ms":90210,"pid":211,"work":40000,"iterations":40000,"elapsed_ms":61234}',
};

test('parses ready', () => {
  assert.deepEqual(parseGuestLine(samples.ready), { type: 'ready', uptime_ms: 4210, mem_mib: 32, disk_blocks: 2048 });
});

test('parses memory heartbeats and violations', () => {
  assert.deepEqual(parseGuestLine(samples.memHeartbeat), { type: 'mem-heartbeat', uptime_ms: 5210, pass: 1234, mib: 32, violations: 0 });
  assert.deepEqual(parseGuestLine(samples.memViolation), { type: 'mem-violation', uptime_ms: 6000, page: 4096, expected: 17, found: 238 });
});

test('parses disk heartbeats and violations, with every reason', () => {
  assert.deepEqual(parseGuestLine(samples.diskHeartbeat), { type: 'disk-heartbeat', uptime_ms: 5300, pass: 3, blocks: 2048, verified: 4097, violations: 0 });
  for (const reason of ['checksum', 'magic', 'index', 'sequence', 'io']) {
    const r = parseGuestLine(`{"type":"disk-violation","uptime_ms":1,"block":7,"reason":"${reason}"}`);
    assert.equal(r.type, 'disk-violation');
    assert.equal(r.type === 'disk-violation' && r.reason, reason);
  }
  assert.equal(parseGuestLine('{"type":"disk-violation","uptime_ms":1,"block":7,"reason":"gremlins"}').type, 'unparsed');
});

test('parses ack, pong and error', () => {
  assert.deepEqual(parseGuestLine(samples.ack), { type: 'ack', cmd: 'mem start', ok: true, detail: 'pid 93, sbmem 32' });
  assert.deepEqual(parseGuestLine('{"type":"ack","cmd":"bogus \\"x\\"","ok":false,"detail":"unknown command"}'), {
    type: 'ack',
    cmd: 'bogus "x"',
    ok: false,
    detail: 'unknown command',
  });
  assert.deepEqual(parseGuestLine(samples.pong), { type: 'pong', uptime_ms: 7000 });
  assert.deepEqual(parseGuestLine(samples.error), { type: 'error', source: 'disk', detail: '/dev/vda: No such file or directory' });
});

test('parses crunch-done, for timed and fixed-work crunches', () => {
  assert.deepEqual(parseGuestLine(samples.crunchDone), { type: 'crunch-done', uptime_ms: 90210, pid: 211, work: 40000, iterations: 40000, elapsed_ms: 61234 });
  assert.equal(parseGuestLine('{"type":"crunch-done","uptime_ms":5,"pid":9,"work":0,"iterations":1234,"elapsed_ms":3000}').type, 'crunch-done');
  assert.equal(parseGuestLine('{"type":"crunch-done","uptime_ms":5,"pid":9,"work":0,"iterations":1234}').type, 'unparsed');
});

test('tolerates line endings, surrounding blanks and extra fields', () => {
  assert.equal(parseGuestLine(`${samples.pong}\r\n`).type, 'pong');
  assert.equal(parseGuestLine(`  ${samples.pong}  `).type, 'pong');
  assert.deepEqual(parseGuestLine('{"type":"pong","uptime_ms":5,"extra":"from a newer guest"}'), { type: 'pong', uptime_ms: 5 });
});

test('recovers a whole report after junk or a torn line on the same line', () => {
  assert.equal(parseGuestLine(`\u0000\u00ff${samples.ready}`).type, 'ready');
  assert.equal(parseGuestLine(`{"type":"mem-heartbeat","upt${samples.diskViolation}`).type, 'disk-violation');
});

test('garbage, partial JSON and wrong shapes come back as unparsed with the original line', () => {
  const bad = [
    '',
    '   ',
    'not json',
    'Booting Linux...',
    '{"type":"mem-heartbeat"',
    samples.memHeartbeat.slice(0, 40),
    '[1,2]',
    'null',
    '42',
    '"ready"',
    '{}',
    '{"type":"reboot","uptime_ms":1}',
    '{"type":"ready","uptime_ms":-1,"mem_mib":32,"disk_blocks":1}',
    '{"type":"ready","uptime_ms":1.5,"mem_mib":32,"disk_blocks":1}',
    '{"type":"ready","uptime_ms":"1","mem_mib":32,"disk_blocks":1}',
    '{"type":"mem-heartbeat","uptime_ms":1,"pass":1,"mib":32}',
    '{"type":"ack","cmd":"ping","ok":"yes","detail":""}',
    '{"type":"error","source":"gpu","detail":"x"}',
    '{"type":"ready","uptime_ms":1,"mem_mib":32,"disk_blocks":1}}',
    'x'.repeat(100_000),
  ];
  for (const line of bad) {
    const r = parseGuestLine(line);
    assert.equal(r.type, 'unparsed', line.slice(0, 80));
    assert.equal(r.type === 'unparsed' && r.line, line);
    assert.equal(typeof (r.type === 'unparsed' && r.error), 'string');
  }
});

test('never throws, whatever the input', () => {
  const weird = ['\u0000', '\uffff'.repeat(10), '{"__proto__":{"type":"pong"}}', '{"type":{"toString":1}}', '{'.repeat(10_000)];
  for (const line of weird) assert.doesNotThrow(() => parseGuestLine(line));
  assert.doesNotThrow(() => parseGuestLine(undefined as unknown as string));
});

test('formats every command as the guest reads it', () => {
  const cases: [GuestCommand, string][] = [
    [{ type: 'ping' }, 'ping'],
    [{ type: 'mem-start' }, 'mem start'],
    [{ type: 'mem-start', mib: 64 }, 'mem start 64'],
    [{ type: 'mem-stop' }, 'mem stop'],
    [{ type: 'disk-start' }, 'disk start'],
    [{ type: 'disk-start', blocks: 1024 }, 'disk start 1024'],
    [{ type: 'disk-stop' }, 'disk stop'],
    [{ type: 'corrupt-mem' }, 'corrupt-mem'],
    [{ type: 'crunch', seconds: 30 }, 'crunch 30'],
    [{ type: 'crunch', work: 40_000 }, 'crunch --work 40000'],
    [{ type: 'fill', mib: 320 }, 'fill 320'],
    [{ type: 'fill-change', percent: 0 }, 'fill change 0'],
    [{ type: 'fill-change', percent: 100 }, 'fill change 100'],
    [{ type: 'fill-check' }, 'fill check'],
    [{ type: 'poweroff' }, 'poweroff'],
  ];
  for (const [cmd, line] of cases) {
    assert.equal(formatGuestCommand(cmd), line);
    assert.ok(!line.includes('\n'));
  }
});

test('rejects numbers the guest would refuse', () => {
  assert.throws(() => formatGuestCommand({ type: 'crunch', seconds: 0 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'crunch', seconds: 1.5 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'crunch', seconds: 86_401 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'crunch', work: 0 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'crunch', work: 2.5 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'crunch', work: 1e12 + 1 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'mem-start', mib: -1 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'fill', mib: 0 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'fill-change', percent: 101 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'fill-change', percent: 2.5 }), RangeError);
  assert.throws(() => formatGuestCommand({ type: 'disk-start', blocks: Number.NaN }), RangeError);
});

test('acks are matched to the command that caused them', () => {
  assert.equal(ackName({ type: 'mem-start', mib: 8 }), 'mem start');
  assert.equal(ackName({ type: 'crunch', seconds: 3 }), 'crunch');
  assert.equal(ackName({ type: 'crunch', work: 3 }), 'crunch');
  const ack = parseGuestLine('{"type":"ack","cmd":"disk stop","ok":true,"detail":"stopped pid 90"}');
  assert.ok(isAckFor(ack, { type: 'disk-stop' }));
  assert.ok(!isAckFor(ack, { type: 'disk-start' }));
  assert.ok(!isAckFor(parseGuestLine(samples.pong), { type: 'ping' }));
});
