// proxy/cancel.ts without sockets: a cancel for a statement behind the
// proxy's settings query (applied at checkout, in the same write) waits for
// that query to answer, so the signal cannot cancel the settings instead of
// the statement; then it goes out as usual.
import t from 'tap';
import { Cancels, type CancelSubject } from '../../src/proxy/cancel.js';
import type { ClientSide } from '../../src/proxy/clientSide.js';
import type { ServerConnection } from '../../src/server/connection.js';
import type { ServerPool } from '../../src/server/pool.js';
import type { ServiceStats } from '../../src/budget/stats.js';

function setup() {
  const sent: { conn: ServerConnection; stillWanted: () => boolean; done: () => void }[] = [];
  const pool = { cancelQuery: (conn: ServerConnection, stillWanted: () => boolean, done: () => void) => void sent.push({ conn, stillWanted, done }) } as unknown as ServerPool;
  const conn = { id: 1 } as unknown as ServerConnection;
  const link = { queued: false, linkedServer: conn, settling: false, answerQueued: () => undefined } as { -readonly [K in keyof CancelSubject]: CancelSubject[K] };
  const client = {
    tx: { cancellable: true },
    statementLayer: { held: null },
    outbound: { lastType: 0 },
    inbound: { atBoundary: true },
  } as unknown as ClientSide;
  const cancels = new Cancels(pool, link, client, { stats: () => ({}) as ServiceStats });
  return { sent, link, cancels, conn };
}

t.test('a statement on the server: the cancel goes out at once', async (t) => {
  const { sent, cancels, conn } = setup();
  let done = 0;
  cancels.request(() => done++);
  t.equal(sent.length, 1);
  t.equal(sent[0].conn, conn);
  t.equal(sent[0].stillWanted(), true);
});

t.test('behind the settings query: owed until it answers, then sent', async (t) => {
  const { sent, link, cancels } = setup();
  link.settling = true;
  let done = 0;
  cancels.request(() => done++);
  t.equal(sent.length, 0, 'not sent while the settings query runs');
  t.ok(cancels.owes);
  cancels.settle();
  t.equal(sent.length, 0, 'still not, while it runs');
  link.settling = false;
  cancels.settle();
  t.equal(sent.length, 1, 'sent once it has answered');
  t.notOk(cancels.owes);
  t.equal(done, 0, "the canceller's connection closes when the cancel is through");
  sent[0].done();
  t.equal(done, 1);
});

t.test('the link ends while the cancel is owed: nothing to cancel, the canceller is let go', async (t) => {
  const { sent, link, cancels } = setup();
  link.settling = true;
  let done = 0;
  cancels.request(() => done++);
  cancels.drop();
  t.equal(done, 1);
  t.equal(sent.length, 0);
});
