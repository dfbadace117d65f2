// Client authentication's pure parts: SCRAM-SHA-256 as a server against
// the proxy's own SCRAM client, md5, stored secrets, PgBouncer's
// userlist.txt, and the conversation's errors, with PostgreSQL's wording.
import t from 'tap';
import fc from 'fast-check';
import { md5Hash, md5Password } from '../../src/auth/md5.js';
import { hmac, keysFromPassword, parseVerifier, xor } from '../../src/auth/scram.js';
import { tlsServerEndPoint } from '../../src/auth/channelBinding.js';
import { ScramServer } from '../../src/auth/scramServer.js';
import { parseSecret } from '../../src/auth/secret.js';
import { parseUserlist } from '../../src/auth/userlist.js';
import { Authentication, type AuthStep, type KnownSecret } from '../../src/client/authenticate.js';
import { ScramClient } from '../../src/server/scram.js';

const salt = Buffer.from('0123456789abcdef');

function verifierText(password: string, iterations = 4096): string {
  const k = keysFromPassword(password, salt, iterations);
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${k.storedKey.toString('base64')}:${k.serverKey.toString('base64')}`;
}

/** A whole 'p' message with `body`. */
function p(body: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h[0] = 0x70;
  h.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([h, body]);
}

function saslInitial(data: string, mechanism = 'SCRAM-SHA-256'): Buffer {
  const d = Buffer.from(data);
  const len = Buffer.alloc(4);
  len.writeInt32BE(d.length);
  return p(Buffer.concat([Buffer.from(mechanism + '\0'), len, d]));
}

/** The data of an AuthenticationSASLContinue/Final ('R', int32 11/12, data). */
function saslData(msg: Buffer): string {
  return msg.toString('utf8', 9);
}

/** A whole SCRAM login through Authentication, as a client with `password` runs it. */
function scramLogin(auth: Authentication, password: string): { steps: AuthStep[]; client: ScramClient } {
  const client = new ScramClient(password);
  const start = auth.start();
  const steps: AuthStep[] = [];
  t.equal(start.readInt32BE(5), 10, 'AuthenticationSASL');
  t.match(start.toString('latin1', 9), /^(SCRAM-SHA-256-PLUS\0)?SCRAM-SHA-256\0\0$/, 'offers SCRAM-SHA-256 (and PLUS over TLS)');
  const first = auth.receive(saslInitial(client.clientFirst()));
  steps.push(first);
  if (first.kind !== 'continue') return { steps, client };
  const final = client.clientFinal(saslData(first.send));
  steps.push(auth.receive(p(Buffer.from(final))));
  return { steps, client };
}

const known = (text: string): KnownSecret => {
  const secret = parseSecret(text);
  return secret.kind === 'password' ? { secret, scram: keysFromPassword(secret.password, salt, 4096) } : { secret };
};

t.test('SCRAM: the right password, from a verifier or a password in clear; the server proves itself', async (t) => {
  for (const stored of [verifierText('s3cret'), 's3cret']) {
    const auth = new Authentication('scram-sha-256', 'alice', known(stored));
    const { steps, client } = scramLogin(auth, 's3cret');
    const last = steps[1];
    t.equal(last?.kind, 'ok', `${stored.slice(0, 13)}: authenticated`);
    if (last?.kind !== 'ok') continue;
    t.doesNotThrow(() => client.verifyServerFinal(saslData(last.send!)), 'the server signature checks out');
    t.same(last.clientKey, keysFromPassword('s3cret', salt, 4096).clientKey, 'the proof reveals the ClientKey');
  }
});

t.test('SCRAM: a wrong password, an unknown user, an md5 hash: 28P01 at the end of a full exchange', async (t) => {
  const cases: [string, KnownSecret | null, string][] = [
    ['wrong password', known(verifierText('right')), 'wrong'],
    ['unknown user', null, 'anything'],
    ['only an md5 hash', known(md5Hash('pw', 'alice')), 'pw'],
  ];
  for (const [what, secret, password] of cases) {
    const { steps } = scramLogin(new Authentication('scram-sha-256', 'alice', secret), password);
    t.equal(steps[0].kind, 'continue', `${what}: the exchange goes on as for anyone`);
    const last = steps[1];
    t.equal(last?.kind, 'failed', `${what}: refused`);
    if (last?.kind === 'failed') {
      t.same([last.error.severity, last.error.code, last.error.message], ['FATAL', '28P01', 'password authentication failed for user "alice"']);
    }
  }
  const a = new ScramServer(null, 'ghost').first('n,,n=*,r=abc');
  const b = new ScramServer(null, 'ghost').first('n,,n=*,r=abc');
  const salts = [a, b].map((r) => (r.ok ? r.value.split(',s=')[1] : ''));
  t.equal(salts[0], salts[1], "an unknown user's made-up salt is the same each time, like a real one");
});

t.test('SCRAM: malformed messages get 08P01 with the detail PostgreSQL gives', async (t) => {
  const cases: [string, string][] = [
    ['p=tls-server-end-point,,n=*,r=abc', 'without channel binding, but the SCRAM message includes channel binding data'],
    ['x,,n=*,r=abc', 'channel-binding flag'],
    ['n,a=bob,n=*,r=abc', 'authorization identity'],
    ['n,,n=*', 'client nonce'],
  ];
  for (const [first, detail] of cases) {
    const auth = new Authentication('scram-sha-256', 'alice', known('pw'));
    auth.start();
    const step = auth.receive(saslInitial(first));
    t.equal(step.kind, 'failed', first);
    if (step.kind === 'failed') {
      t.same([step.error.code, step.error.message], ['08P01', 'malformed SCRAM message']);
      t.match(step.error.detail, detail);
    }
  }
  const wrongMechanism = new Authentication('scram-sha-256', 'alice', known('pw'));
  const step = wrongMechanism.receive(saslInitial('n,,n=*,r=abc', 'SCRAM-SHA-256-PLUS'));
  t.equal(step.kind === 'failed' && step.error.message, 'client selected an invalid SASL authentication mechanism');
  // A final message whose nonce is not the server's.
  const server = new ScramServer(keysFromPassword('pw', salt, 4096), 'alice');
  server.first('n,,n=*,r=abc');
  const final = server.final('c=biws,r=abcOTHER,p=AAAA');
  t.same(final.ok ? null : [final.malformed, final.reason], [true, 'Nonce does not match.']);
  const notP = new Authentication('scram-sha-256', 'alice', known('pw'));
  const q = Buffer.from('Q\0\0\0\x09sel\0', 'latin1');
  const r = notP.receive(q);
  t.equal(r.kind === 'failed' && r.error.message, 'expected SASL response, got message type 81');
});

t.test('md5: the right answer from a password in clear or a stored hash; a wrong one is 28P01', async (t) => {
  for (const stored of ['pw', md5Hash('pw', 'alice')]) {
    for (const [password, ok] of [['pw', true], ['nope', false]] as const) {
      const auth = new Authentication('md5', 'alice', known(stored));
      const start = auth.start();
      t.equal(start.readInt32BE(5), 5, 'AuthenticationMD5Password');
      const answer = md5Password('alice', password, start.subarray(9, 13));
      const step = auth.receive(p(Buffer.from(answer + '\0')));
      t.equal(step.kind, ok ? 'ok' : 'failed', `${stored.slice(0, 3)} stored, ${password}`);
    }
  }
  const unknown = new Authentication('md5', 'ghost', null);
  const start = unknown.start();
  const step = unknown.receive(p(Buffer.from(md5Password('ghost', 'x', start.subarray(9, 13)) + '\0')));
  t.equal(step.kind === 'failed' && step.error.code, '28P01', 'an unknown user fails like a wrong password');
  const scramStored = new Authentication('md5', 'alice', known(verifierText('pw')));
  t.equal(scramStored.start().readInt32BE(5), 10, 'md5 configured, a SCRAM verifier stored: SCRAM, as PostgreSQL does');
});

t.test('SCRAM round trip for any password, SASLprep-normalised passwords included', async (t) => {
  fc.assert(
    fc.property(fc.string({ minLength: 1, maxLength: 30 }), fc.boolean(), (password, right) => {
      const stored = known(verifierText(password, 64));
      const auth = new Authentication('scram-sha-256', 'u', stored);
      const client = new ScramClient(right ? password : password + 'x');
      auth.start();
      const first = auth.receive(saslInitial(client.clientFirst()));
      if (first.kind !== 'continue') return false;
      const last = auth.receive(p(Buffer.from(client.clientFinal(saslData(first.send)))));
      return last.kind === (right ? 'ok' : 'failed');
    }),
    { numRuns: 60 },
  );
  const ix = known(verifierText('IX-IX'));
  const { steps } = scramLogin(new Authentication('scram-sha-256', 'u', ix), 'IX-Ⅸ');
  t.equal(steps[1]?.kind, 'ok', "'Ⅸ' is 'IX' after SASLprep's normalisation");
});

t.test('stored secrets and userlist.txt', async (t) => {
  t.equal(parseSecret(md5Hash('pw', 'u')).kind, 'md5');
  t.equal(parseSecret(verifierText('pw')).kind, 'scram');
  t.equal(parseSecret('SCRAM-SHA-256$not a verifier').kind, 'password', 'anything else is a password');
  t.ok(parseVerifier(verifierText('pw')));
  const list = parseUserlist(
    [';; comment', '', '"alice" "pa""ss"', '  "bob"   "md5' + '0'.repeat(32) + '"  trailing ignored', '# other comment', '"car ol" ""'].join('\n'),
  );
  t.same(list, {
    entries: [
      { user: 'alice', secret: 'pa"ss' },
      { user: 'bob', secret: 'md5' + '0'.repeat(32) },
      { user: 'car ol', secret: '' },
    ],
  });
  const bad = parseUserlist('"alice" "secret-value\n');
  t.same(bad, { error: 'line 1: expected "name" "secret"' }, 'a malformed line is named by number, never by its content');
});

t.test('password (over TLS): the password in clear, checked against a password, an md5 hash or a verifier', async (t) => {
  for (const stored of ['pw', md5Hash('pw', 'alice'), verifierText('pw')]) {
    for (const [given, ok] of [['pw', true], ['nope', false], ['', false]] as const) {
      const auth = new Authentication('password', 'alice', known(stored));
      t.equal(auth.start().readInt32BE(5), 3, 'AuthenticationCleartextPassword');
      const step = auth.receive(p(Buffer.from(given + '\0')));
      t.equal(step.kind, ok ? 'ok' : 'failed', `${stored.slice(0, 5)} stored, ${JSON.stringify(given)} given`);
    }
  }
});

/** A SCRAM-SHA-256-PLUS login as a client bound to `binding` runs it. */
function plusLogin(auth: Authentication, password: string, binding: Buffer): AuthStep {
  const bare = 'n=*,r=clientnonce';
  const gs2 = 'p=tls-server-end-point,,';
  const first = auth.receive(saslInitial(gs2 + bare, 'SCRAM-SHA-256-PLUS'));
  if (first.kind !== 'continue') return first;
  const serverFirst = saslData(first.send);
  const attrs = new Map(serverFirst.split(',').map((a) => [a[0], a.slice(2)] as [string, string]));
  const keys = keysFromPassword(password, Buffer.from(attrs.get('s')!, 'base64'), Number(attrs.get('i')));
  const withoutProof = `c=${Buffer.concat([Buffer.from(gs2), binding]).toString('base64')},r=${attrs.get('r')}`;
  const proof = xor(keys.clientKey, hmac(keys.storedKey, `${bare},${serverFirst},${withoutProof}`));
  return auth.receive(p(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
}

t.test('over TLS: SCRAM-SHA-256-PLUS is offered first and binds the exchange to the certificate', async (t) => {
  const binding = tlsServerEndPoint(Buffer.from('a certificate, DER'));
  const fresh = () => new Authentication('scram-sha-256', 'alice', known(verifierText('pw')), binding);
  const offer = fresh().start();
  t.equal(offer.toString('latin1', 9), 'SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0', 'both mechanisms, PLUS first');
  t.equal(plusLogin(fresh(), 'pw', binding).kind, 'ok', 'bound to the same certificate: in');
  const other = plusLogin(fresh(), 'pw', tlsServerEndPoint(Buffer.from('another certificate')));
  t.same(other.kind === 'failed' && [other.error.message, other.error.detail], ['malformed SCRAM message', 'SCRAM channel binding check failed.'], 'bound to another: refused');
  const { steps } = scramLogin(fresh(), 'pw');
  t.equal(steps[1]?.kind, 'ok', 'a client that does not bind ("n") may still use SCRAM-SHA-256');
  const downgraded = fresh();
  downgraded.start();
  const y = downgraded.receive(saslInitial('y,,n=*,r=abc'));
  t.match(y.kind === 'failed' && y.error.detail, /thinks the server does not/, '"y" while PLUS is offered: a downgrade, refused');
  const plain = new Authentication('scram-sha-256', 'alice', known(verifierText('pw')));
  plain.start();
  const unasked = plain.receive(saslInitial('p=tls-server-end-point,,n=*,r=abc', 'SCRAM-SHA-256-PLUS'));
  t.equal(unasked.kind === 'failed' && unasked.error.message, 'client selected an invalid SASL authentication mechanism', 'PLUS without TLS: not offered');
});
