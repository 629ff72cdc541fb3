import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LineSplitter, QmpDecoder } from '../../src/migrator/qmp/common/framing.ts';
import { encodeQmpCommand, parseQmpMessage, type QmpInbound } from '../../src/migrator/qmp/common/messages.ts';

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

/** Lines from feeding `chunks` in order. */
function split(chunks: (string | Uint8Array)[], max?: number): ReturnType<LineSplitter['push']> {
  const splitter = new LineSplitter(max);
  return chunks.flatMap((c) => splitter.push(typeof c === 'string' ? bytes(c) : c));
}

const lines = (...texts: string[]) => texts.map((text) => ({ kind: 'line', text }));

// Recorded from QEMU 7.2: greeting, negotiation reply, then `cont` (its event arrives before its reply).
const TRANSCRIPT =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n' +
  '{"return": {}, "id": 1}\r\n' +
  '{"timestamp": {"seconds": 1795312987, "microseconds": 500985}, "event": "RESUME"}\r\n' +
  '{"return": {}, "id": 2}\r\n';

describe('LineSplitter', () => {
  test('holds a partial line until its newline arrives', () => {
    const splitter = new LineSplitter();
    assert.deepEqual(splitter.push(bytes('{"return"')), []);
    assert.equal(splitter.bufferedBytes, 9);
    assert.deepEqual(splitter.push(bytes(': {}')), []);
    assert.deepEqual(splitter.push(bytes('}\n')), lines('{"return": {}}'));
    assert.equal(splitter.bufferedBytes, 0);
  });

  test('returns every message in a chunk and keeps the trailing partial one', () => {
    assert.deepEqual(split(['a\nb\nc', '\n']), lines('a', 'b', 'c'));
  });

  test('strips CRLF, and CR split from its LF', () => {
    assert.deepEqual(split(['one\r\ntwo\r', '\nthree\n']), lines('one', 'two', 'three'));
  });

  test('skips blank lines', () => {
    assert.deepEqual(split(['\r\n\na\n\r\n']), lines('a'));
  });

  test('decodes UTF-8 sequences split across chunks at every byte', () => {
    const text = '{"desc": "é ✓ 🚀"}';
    const encoded = bytes(`${text}\r\n`);
    for (let cut = 1; cut < encoded.length; cut++) {
      assert.deepEqual(split([encoded.subarray(0, cut), encoded.subarray(cut)]), lines(text), `cut at ${cut}`);
    }
    const oneByteChunks = [...encoded].map((b) => Uint8Array.of(b));
    assert.deepEqual(split(oneByteChunks), lines(text));
  });

  test('reports an over-long line once, discards it up to its newline and resynchronises', () => {
    const splitter = new LineSplitter(8);
    assert.deepEqual(splitter.push(bytes('12345')), []);
    assert.deepEqual(splitter.push(bytes('6789')), [{ kind: 'too-long', limit: 8 }]);
    assert.equal(splitter.bufferedBytes, 0);
    assert.deepEqual(splitter.push(bytes('more junk without end')), []);
    assert.equal(splitter.bufferedBytes, 0);
    assert.deepEqual(splitter.push(bytes('tail\nok\n')), lines('ok'));
  });

  test('an over-long line inside one chunk does not hide the lines around it', () => {
    assert.deepEqual(split(['ok1\n0123456789abc\nok2\n'], 8), [
      ...lines('ok1'),
      { kind: 'too-long', limit: 8 },
      ...lines('ok2'),
    ]);
  });

  test('a line of exactly the limit is accepted', () => {
    assert.deepEqual(split(['12345678\n'], 8), lines('12345678'));
  });
});

describe('parseQmpMessage', () => {
  test('greeting', () => {
    const [first] = new QmpDecoder().push(bytes(TRANSCRIPT));
    assert.deepEqual(first, {
      type: 'greeting',
      greeting: {
        version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'Debian 1:7.2+dfsg-7+deb12u18+b3' },
        capabilities: ['oob'],
      },
    });
  });

  test('event with and without data', () => {
    assert.deepEqual(parseQmpMessage('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'), {
      type: 'event',
      event: { event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } },
    });
    assert.deepEqual(
      parseQmpMessage('{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false}}'),
      { type: 'event', event: { event: 'SHUTDOWN', data: { guest: false }, timestamp: { seconds: 1, microseconds: 2 } } },
    );
  });

  test('return and error replies, with and without id', () => {
    assert.deepEqual(parseQmpMessage('{"return": {"running": true}, "id": 7}'), {
      type: 'return',
      id: 7,
      value: { running: true },
    });
    assert.deepEqual(parseQmpMessage('{"return": "text\\r\\n", "id": "x"}'), { type: 'return', id: 'x', value: 'text\r\n' });
    assert.deepEqual(parseQmpMessage('{"id": 5, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}'), {
      type: 'error',
      id: 5,
      errorClass: 'CommandNotFound',
      desc: 'The command nope has not been found',
    });
    // QEMU answers input it cannot parse without an id.
    assert.deepEqual(parseQmpMessage('{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}'), {
      type: 'error',
      id: undefined,
      errorClass: 'GenericError',
      desc: 'QMP input must be a JSON object',
    });
  });

  test('malformed input is classified invalid, never thrown', () => {
    const invalid = [
      '{"return": ',
      'not json',
      '[1, 2]',
      '"string"',
      'null',
      '{"QMP": {"version": {}}}',
      '{"event": "STOP"}',
      '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}, "data": [1]}',
      '{"error": "oops", "id": 1}',
      '{"hello": 1}',
    ];
    for (const line of invalid) {
      const result = parseQmpMessage(line);
      assert.equal(result.type, 'invalid', line);
    }
    const long = parseQmpMessage(`{${'x'.repeat(1000)}`);
    assert.ok(long.type === 'invalid' && long.reason.length < 400, 'the reason quotes only a snippet');
  });
});

describe('QmpDecoder', () => {
  test('a recorded QEMU transcript decodes the same whole and byte by byte', () => {
    const whole = new QmpDecoder().push(bytes(TRANSCRIPT));
    assert.deepEqual(
      whole.map((m) => m.type),
      ['greeting', 'return', 'event', 'return'],
    );
    const decoder = new QmpDecoder();
    const byByte: QmpInbound[] = [...bytes(TRANSCRIPT)].flatMap((b) => decoder.push(Uint8Array.of(b)));
    assert.deepEqual(byByte, whole);
  });

  test('an over-long line becomes an invalid message', () => {
    const messages = new QmpDecoder(32).push(bytes('{"return": {"big": "xxxxxxxx"}, "id": 1}\r\n{"return": {}, "id": 2}\r\n'));
    assert.equal(messages.length, 2);
    assert.ok(messages[0]?.type === 'invalid' && messages[0].reason.includes('longer than 32 bytes'));
    assert.deepEqual(messages[1], { type: 'return', id: 2, value: {} });
  });
});

describe('encodeQmpCommand', () => {
  test('writes one JSON line with execute, arguments only when given, and id', () => {
    assert.equal(encodeQmpCommand(3, 'query-status'), '{"execute":"query-status","id":3}\n');
    assert.equal(
      encodeQmpCommand(4, 'migrate', { uri: 'unix:/tmp/m' }),
      '{"execute":"migrate","arguments":{"uri":"unix:/tmp/m"},"id":4}\n',
    );
  });

  test('out of band: exec-oob instead of execute', () => {
    assert.equal(encodeQmpCommand(5, 'migrate-recover', { uri: 'unix:/tmp/r' }, true), '{"exec-oob":"migrate-recover","arguments":{"uri":"unix:/tmp/r"},"id":5}\n');
  });
});
