import t from 'tap';
import { serialize } from 'pg-protocol/dist/serializer';
import { parseStartupPacket, startupPacketLength } from '../../src/protocol/startup.js';

t.test('startup message with parameters', async (t) => {
  const pkt = serialize.startup({ user: 'alice', database: 'shop', application_name: 'loader' });
  t.equal(startupPacketLength(pkt), pkt.length);
  const p = parseStartupPacket(pkt);
  t.same(p, { kind: 'startup', minorVersion: 0, params: { user: 'alice', database: 'shop', application_name: 'loader', client_encoding: 'UTF8' }, protocolOptions: [] });
});

t.test('ssl, gssenc and cancel requests', async (t) => {
  t.same(parseStartupPacket(serialize.requestSsl()), { kind: 'ssl' });
  const gss = Buffer.alloc(8);
  gss.writeInt32BE(8, 0);
  gss.writeInt32BE(80877104, 4);
  t.same(parseStartupPacket(gss), { kind: 'gssenc' });
  t.same(parseStartupPacket(serialize.cancel(1234, 5678)), { kind: 'cancel', processId: 1234, secretKey: 5678 });
});

t.test('length checks', async (t) => {
  t.equal(startupPacketLength(Buffer.from([0, 0])), -1);
  t.throws(() => startupPacketLength(Buffer.from([0, 0, 0, 4])), { name: 'StartupPacketError' });
  t.throws(() => startupPacketLength(Buffer.from([0, 1, 0, 0])), /invalid startup packet length 65536/);
});

t.test('malformed startup packets', async (t) => {
  const v2 = Buffer.alloc(8);
  v2.writeInt32BE(8, 0);
  v2.writeInt32BE(2 << 16, 4);
  t.throws(() => parseStartupPacket(v2), /unsupported frontend protocol 2\.0/);

  const noUser = serialize.startup({ database: 'x' });
  t.throws(() => parseStartupPacket(noUser), /no PostgreSQL user name/);

  const unterminated = Buffer.concat([Buffer.alloc(8), Buffer.from('user\0bob')]);
  unterminated.writeInt32BE(unterminated.length, 0);
  unterminated.writeInt32BE(196608, 4);
  t.throws(() => parseStartupPacket(unterminated), { name: 'StartupPacketError' });
});

t.test('protocol 3.2 and _pq_ options are noted for negotiation', async (t) => {
  const pkt = serialize.startup({ user: 'a', _pq_x: '1' });
  pkt.writeInt32BE((3 << 16) | 2, 4);
  const p = parseStartupPacket(pkt);
  t.equal(p.kind, 'startup');
  if (p.kind === 'startup') t.equal(p.minorVersion, 2);
});

t.test('a repeated startup packet shares one frozen parse; a different one is parsed afresh', async (t) => {
  const pkt = serialize.startup({ user: 'svc', database: 'app', search_path: 'a' });
  const first = parseStartupPacket(pkt);
  const again = parseStartupPacket(Buffer.from(pkt)); // equal bytes, another buffer
  t.equal(again, first, 'the same object');
  t.ok(Object.isFrozen(first) && first.kind === 'startup' && Object.isFrozen(first.params), 'frozen');
  t.throws(() => {
    (first as { params: Record<string, string> }).params.user = 'other';
  }, TypeError);
  pkt[pkt.indexOf('search_path\0') + 12] = 0x62; // the caller's buffer changes: the kept copy does not
  const changed = parseStartupPacket(pkt);
  t.not(changed, first);
  t.equal(changed.kind === 'startup' && changed.params.search_path, 'b');
  const other = parseStartupPacket(serialize.startup({ user: 'svc', database: 'app', search_path: 'a' }));
  t.same(other, first, 'parsed afresh, equal');
  t.equal(parseStartupPacket(serialize.startup({ user: 'svc', database: 'app', search_path: 'a' })), other, 'and kept');
});
