// client/inbound.ts with client/transaction.ts and client/statementLayer.ts,
// on byte streams cut at random: what reaches the server is exactly the
// client's bytes up to a Terminate (session mode) or its whole messages, in
// order, with only the statements the checks replace replaced (transaction
// mode); the tracker counts the replies the server owes; session state pins.
import fc from 'fast-check';
import t from 'tap';
import { ClientInbound } from '../../src/client/inbound.js';
import { StatementLayer } from '../../src/client/statementLayer.js';
import { TransactionTracker } from '../../src/client/transaction.js';
import { TxStatus } from '../../src/protocol/codes.js';
import { splits } from '../helpers/arbitraries.js';
import { msg } from '../helpers/wire.js';

const query = (sql: string) => msg('Q', sql + '\0');
const parse = (sql: string) => msg('P', `\0${sql}\0\0\0`);
const bind = () => msg('B', Buffer.from('\0\0\0\0\0\0\0\0', 'latin1'));
const execute = () => msg('E', Buffer.from('\0\0\0\0\0', 'latin1'));
const sync = () => msg('S');
const terminate = () => msg('X');

/** A client's traffic: statements, some that set session state, some extended batches. */
const traffic = fc.array(
  fc.oneof(
    fc.constant([query('select 1')]),
    fc.constant([query('set search_path = a')]),
    fc.constant([parse('select $1::int'), bind(), execute(), sync()]),
    fc.constant([query("select repeat('x', 3000)")]),
  ),
  { minLength: 1, maxLength: 8 },
).map((groups) => groups.flat());

function rig(whole: boolean) {
  const tx = new TransactionTracker();
  const layer = new StatementLayer();
  const inbound = new ClientInbound(tx, layer, 1 << 20);
  if (whole) inbound.readWhole();
  return { tx, layer, inbound };
}

const owed = (messages: Buffer[]) => messages.filter((m) => m[0] === 0x51 || m[0] === 0x53).length;

t.test('session mode: every byte up to the Terminate goes through, in order, whole headers only', async (t) => {
  fc.assert(
    fc.property(
      traffic.chain((messages) => {
        const stream = Buffer.concat([...messages, terminate(), query('select 2')]);
        return fc.tuple(fc.constant(messages), splits(stream, 12));
      }),
      ([messages, chunks]) => {
        const { tx, inbound } = rig(false);
        const out: Buffer[] = [];
        for (const chunk of chunks) {
          if (inbound.terminated) break;
          const data = inbound.readBytes(chunk);
          if (typeof data === 'string') return false;
          out.push(data);
        }
        return inbound.terminated && Buffer.concat(out).equals(Buffer.concat(messages)) && tx.expectedReady === owed(messages);
      },
    ),
    { numRuns: 500 },
  );
  t.pass('500 random streams and cuts');
});

t.test('session mode without a Terminate: everything goes through, and the reader ends at a boundary', async (t) => {
  fc.assert(
    fc.property(
      traffic.chain((messages) => fc.tuple(fc.constant(messages), splits(Buffer.concat(messages), 12))),
      ([messages, chunks]) => {
        const { tx, inbound } = rig(false);
        const out: Buffer[] = [];
        for (const chunk of chunks) {
          const data = inbound.readBytes(chunk);
          if (typeof data === 'string') return false;
          out.push(data);
        }
        return !inbound.terminated && Buffer.concat(out).equals(Buffer.concat(messages)) && tx.expectedReady === owed(messages) && inbound.atBoundary;
      },
    ),
    { numRuns: 500 },
  );
  t.pass('500 random streams and cuts');
});

t.test('transaction mode: the same whole messages come out, whatever the cuts, and SET pins', async (t) => {
  fc.assert(
    fc.property(
      traffic.chain((messages) => fc.tuple(fc.constant(messages), splits(Buffer.concat(messages), 12))),
      ([messages, chunks]) => {
        const { tx, inbound } = rig(true);
        const out: Buffer[] = [];
        let pinned = false;
        for (const chunk of chunks) {
          const got = inbound.readMessages(chunk, 'app', 'pin');
          if (typeof got === 'string') return false;
          if (inbound.pinReason === 'set') pinned = true;
          out.push(...got);
        }
        const sets = messages.some((m) => m.includes('set search_path'));
        return (
          out.length === messages.length &&
          out.every((m, i) => m.equals(messages[i])) &&
          tx.expectedReady === owed(messages) &&
          pinned === sets &&
          inbound.atBoundary
        );
      },
    ),
    { numRuns: 500 },
  );
  t.pass('500 random streams and cuts');
});

t.test('transaction mode: onSessionState error replaces the statement; a malformed message is a violation', async (t) => {
  const { inbound } = rig(true);
  const out = inbound.readMessages(query('set search_path = a'), 'app', 'error');
  t.ok(Array.isArray(out) && out.length === 1 && !out[0].equals(query('set search_path = a')), 'replaced by the failing statement');
  t.equal(inbound.pinReason, null, 'not pinned');
  const bad = rig(true).inbound.readMessages(msg('Q', 'no terminator'), 'app', 'pin');
  t.type(bad, 'string', 'a Query without its terminator');
  const frame = rig(false).inbound.readBytes(Buffer.from([0x51, 0, 0, 0, 2]));
  t.type(frame, 'string', 'a length under 4 in session mode');
});

t.test('the tracker: when the server owes replies, when a transaction is open, when it is quiet', async (t) => {
  const tx = new TransactionTracker();
  t.ok(tx.quiet, 'quiet at first');
  t.equal(tx.client(0x51), true, 'a Query starts a statement');
  t.equal(tx.client(0x51), false, 'a second one is in line');
  t.notOk(tx.quiet);
  t.equal(tx.ready(TxStatus.InTransaction, 0), true, 'one more in line');
  t.equal(tx.ready(TxStatus.InTransaction, 0), false);
  t.ok(tx.inTransaction(false), 'BEGIN left a transaction open');
  t.notOk(tx.quiet, 'not quiet inside a transaction');
  tx.client(0x51);
  tx.ready(TxStatus.Idle, 0);
  t.ok(tx.quiet, 'quiet after COMMIT');
  // COPY FROM STDIN with Syncs pipelined behind its Execute: the server ignores them.
  tx.client(0x50);
  tx.client(0x45);
  tx.client(0x53);
  tx.client(0x53);
  t.equal(tx.copyIn(), 2, 'both pipelined Syncs are ignored');
  t.equal(tx.expectedReady, 0);
  t.equal(tx.client(0x53), false, 'a Sync during COPY FROM STDIN is ignored too');
  tx.client(0x63);
  tx.client(0x53);
  tx.ready(TxStatus.Idle, 0);
  t.ok(tx.quiet, 'quiet after CopyDone and its Sync');
  t.equal(tx.pin('set'), true);
  t.equal(tx.pin('listen'), false, 'pinned once, for the first reason');
  t.equal(tx.pinned, 'set');
});

t.test('the tracker says which timeout is due, counting from the right moment', async (t) => {
  const limits = { clientIdleTimeoutMs: 1000, idleInTransactionTimeoutMs: 400, queryTimeoutMs: 500 };
  const tx = new TransactionTracker();
  tx.heard(0);
  t.equal(tx.due(limits, 999, false), null, 'idle, not yet');
  t.equal(tx.due(limits, 1000, false), 'client_idle_timeout', 'idle for clientIdleTimeoutMs');
  tx.heard(2000);
  tx.client(0x51); // BEGIN
  t.equal(tx.statementSince, 2000, 'the statement counts from when it was sent');
  tx.linked(2300);
  t.equal(tx.statementSince, 2300, 'time in the queue is not the statement\'s');
  t.equal(tx.due(limits, 2799, true), null);
  t.equal(tx.due(limits, 2800, true), 'query_timeout', 'running for queryTimeoutMs');
  t.equal(tx.due(limits, 2800, false), null, 'no query timeout without a server connection');
  tx.timedOut = true;
  t.equal(tx.due(limits, 9000, true), null, 'cancelled once, not again');
  tx.ready(TxStatus.InTransaction, 3000);
  t.equal(tx.timedOut, false, 'ReadyForQuery ends it');
  t.equal(tx.due(limits, 3399, true), null, 'idle in transaction, not yet');
  t.equal(tx.due(limits, 3400, true), 'idle_in_transaction_timeout', 'idle in transaction for idleInTransactionTimeoutMs');
  t.equal(tx.due({ ...limits, idleInTransactionTimeoutMs: 0 }, 99_999, true), null, '0 is off');
  tx.client(0x51);
  tx.ready(TxStatus.Idle, 4000);
  tx.client(0x50); // Parse, no Sync yet: an open batch holds the connection as a transaction would
  t.equal(tx.due(limits, 4400, true), 'idle_in_transaction_timeout', 'an unsynced batch while linked');
  t.equal(tx.due(limits, 5000, false), null, 'not while waiting in the queue');
});

t.test('statements that may reset settings are flagged for the link, comments and case aside; others are not', async (t) => {
  const cases: [string, boolean][] = [
    ['reset timezone', true],
    ['RESET ALL', true],
    ['discard all', true],
    ['/* pool */ reset search_path', true],
    ['-- checkin\nDISCARD ALL', true],
    ['select 1; reset application_name', true],
    ["select 'reset timezone'", false],
    ['set timezone = utc', false],
    ['discard plans', false],
    ['select 1', false],
  ];
  for (const [sql, flagged] of cases) {
    for (const m of [query(sql), parse(sql)]) {
      const { inbound } = rig(true);
      inbound.readMessages(m, 'svc', 'pin');
      t.equal(inbound.resetsSettings, flagged, `${m[0] === 0x51 ? 'Query' : 'Parse'} ${JSON.stringify(sql)}`);
    }
  }
});
