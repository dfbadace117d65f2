// client/handshake.ts: the decisions readHandshake hands its listener, for
// bytes cut anywhere. Direct TLS (a TLS handshake record where the first
// packet was due) is recognised from its first byte, only at the start of
// the connection, and only when TLS is offered; an SSLRequest still gets 'S'
// or 'N'; nothing after TLS has started can start it again.
import fc from 'fast-check';
import t from 'tap';
import { readHandshake, type HandshakeListener } from '../../src/client/handshake.js';
import { splits } from '../helpers/arbitraries.js';
import { startupPacket } from '../helpers/wire.js';

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);
const GSSENC_REQUEST = Buffer.from([0, 0, 0, 8, 4, 210, 22, 48]);
/** The start of a TLS 1.2/1.3 ClientHello record: handshake (0x16), version 3.1, a length, type client_hello. */
const CLIENT_HELLO = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x01, 0x20, 0x01, 0x00, 0x01, 0x1c, 0x03, 0x03]), Buffer.alloc(40, 0xab)]);

type Call = [string, ...unknown[]];

/** A listener that keeps the calls, and as the Admission does, is no longer fresh once it answered or started TLS. */
function listener(tlsConfigured: boolean) {
  const calls: Call[] = [];
  let fresh = true;
  let secure = false;
  const l: HandshakeListener = {
    answer: (bytes) => {
      fresh = false;
      calls.push(['answer', bytes.toString('latin1')]);
    },
    startup: (params, rest) => calls.push(['startup', params.user, rest.length]),
    cancel: (pid, key) => calls.push(['cancel', pid, key]),
    goodbye: () => calls.push(['goodbye']),
    violation: (what) => calls.push(['violation', what]),
    get tlsOffered() {
      return tlsConfigured && !secure;
    },
    get fresh() {
      return fresh;
    },
    startTls: () => {
      fresh = false;
      secure = true;
      calls.push(['startTls']);
    },
    startDirectTls: (hello) => {
      fresh = false;
      secure = true;
      calls.push(['startDirectTls', [...hello]]);
    },
    refuseDirectTls: () => calls.push(['refuseDirectTls']),
  };
  return { l, calls };
}

/** Feeds `chunks` in turn as Admission.read does, until the handshake is over; returns what is held at the end. */
function feed(l: HandshakeListener, chunks: Buffer[]): Buffer | null {
  let held: Buffer | null = Buffer.alloc(0);
  for (const chunk of chunks) {
    if (held === null) break;
    held = readHandshake(held, chunk, l);
  }
  return held;
}

t.test('direct TLS: decided on the first byte, even when the first read is that byte alone', async (t) => {
  const { l, calls } = listener(true);
  const held = readHandshake(Buffer.alloc(0), CLIENT_HELLO.subarray(0, 1), l);
  t.same(calls, [['startDirectTls', [0x16]]], 'TLS starts with the one byte given back, no answer written');
  t.equal(held?.length, 0, 'nothing held: what follows is read from TLS');
});

t.test('direct TLS: the bytes read so far go to TLS, for any first read', async (t) => {
  for (let cut = 1; cut <= CLIENT_HELLO.length; cut++) {
    const { l, calls } = listener(true);
    readHandshake(Buffer.alloc(0), CLIENT_HELLO.subarray(0, cut), l);
    t.same(calls, [['startDirectTls', [...CLIENT_HELLO.subarray(0, cut)]]], `first read of ${cut} bytes`);
  }
});

t.test('direct TLS without TLS configured: refused without a word', async (t) => {
  const { l, calls } = listener(false);
  t.equal(readHandshake(Buffer.alloc(0), CLIENT_HELLO.subarray(0, 1), l), null, 'the handshake is over');
  t.same(calls, [['refuseDirectTls']]);
});

t.test('a TLS record later than the first byte is no direct TLS: an invalid startup packet length', async (t) => {
  for (const configured of [true, false]) {
    const { l, calls } = listener(configured);
    t.equal(feed(l, [GSSENC_REQUEST, CLIENT_HELLO]), null);
    t.same(calls[0], ['answer', 'N'], 'GSSENC refused');
    t.equal(calls.length, 2);
    t.match(calls[1], ['violation', /invalid startup packet length/], `after a refused GSSENCRequest (tls ${configured ? 'on' : 'off'})`);
  }
  // In one chunk with the refused request: 'N', and the byte is held (too short for a length), then refused.
  const { l, calls } = listener(true);
  const held = readHandshake(Buffer.alloc(0), Buffer.concat([GSSENC_REQUEST, CLIENT_HELLO.subarray(0, 1)]), l);
  t.same(calls, [['answer', 'N']]);
  t.same(held && [...held], [0x16], 'the byte is held');
  t.equal(readHandshake(held!, CLIENT_HELLO.subarray(1), l), null);
  t.match(calls[1], ['violation', /invalid startup packet length/]);
  const { l: l2, calls: calls2 } = listener(false);
  feed(l2, [SSL_REQUEST, CLIENT_HELLO]);
  t.same(calls2[0], ['answer', 'N'], "TLS off: SSLRequest answered 'N'");
  t.match(calls2[1], ['violation', /invalid startup packet length/], 'then a TLS record is refused as a malformed packet');
});

t.test('no second TLS: a TLS record inside TLS (after SSLRequest or direct) is a malformed packet', async (t) => {
  for (const opening of [SSL_REQUEST, CLIENT_HELLO]) {
    const { l, calls } = listener(true);
    t.equal(feed(l, [opening])?.length, 0);
    t.equal(calls.length, 1);
    t.equal(calls[0][0], opening === SSL_REQUEST ? 'startTls' : 'startDirectTls');
    // What follows comes decrypted, into a fresh handshake buffer.
    const held = readHandshake(Buffer.alloc(0), CLIENT_HELLO.subarray(0, 1), l);
    t.same(held && [...held], [0x16], 'one byte: held, not yet a length');
    t.equal(readHandshake(held!, CLIENT_HELLO.subarray(1), l), null);
    t.match(calls[1], ['violation', /invalid startup packet length/]);
    // An SSLRequest inside TLS is answered 'N', as PostgreSQL refuses other requests for encryption.
    const again = listener(true);
    feed(again.l, [opening, SSL_REQUEST, startupPacket({ user: 'u' })]);
    t.same(again.calls.slice(1), [['answer', 'N'], ['startup', 'u', 0]]);
  }
});

t.test('an SSLRequest then a startup packet, cut anywhere: never taken for direct TLS', async (t) => {
  const pkt = startupPacket({ user: 'alice', database: 'shop' });
  fc.assert(
    fc.property(splits(Buffer.concat([SSL_REQUEST, pkt]), 8), fc.boolean(), (chunks, configured) => {
      const { l, calls } = listener(configured);
      feed(l, chunks);
      // TLS on: TLS starts after the request, and the packet comes from TLS, unless a read ran past the request
      // (plain bytes before the TLS handshake: refused). TLS off: 'N', then the packet.
      const expected = !configured
        ? [['answer', 'N'], ['startup', 'alice', 0]]
        : chunks.some((_, i) => chunks.slice(0, i + 1).reduce((n, c) => n + c.length, 0) === SSL_REQUEST.length)
          ? [['startTls'], ['startup', 'alice', 0]]
          : [['violation', 'received unencrypted data after SSL request']];
      return JSON.stringify(calls) === JSON.stringify(expected);
    }),
  );
});

t.test('direct TLS at any split: the first read decides, all of it given to TLS', async (t) => {
  fc.assert(
    fc.property(splits(CLIENT_HELLO, 8), fc.boolean(), (chunks, configured) => {
      const { l, calls } = listener(configured);
      // Only the first read is the proxy's: what follows goes to TLS (or nowhere).
      const held = readHandshake(Buffer.alloc(0), chunks[0], l);
      if (!configured) return held === null && JSON.stringify(calls) === JSON.stringify([['refuseDirectTls']]);
      return held !== null && calls.length === 1 && calls[0][0] === 'startDirectTls' && Buffer.from(calls[0][1] as number[]).equals(chunks[0]);
    }),
  );
});
