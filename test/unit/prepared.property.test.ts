// Statement rewriting and reply trimming, checked against a model: two
// clients run random extended-protocol transactions over two shared server
// connections, as transaction pooling hands them out. A simulated server
// holds the statements the proxy prepared on each connection and answers
// every message. Properties: the server is never asked for a statement it
// does not have, or for one with another text than the client's; and each
// client sees exactly the completions its own messages would get, in order,
// with the proxy's own hidden. The cache never holds more than its maximum.
import fc from 'fast-check';
import t from 'tap';
import { PreparedStatements } from '../../src/client/prepared.js';
import { buildParse, buildQuery, buildTarget, readBindStatement, readParse, readTarget } from '../../src/protocol/messages.js';
import { ServerStatements } from '../../src/server/statements.js';
import { msg } from '../helpers/wire.js';

const NAMES = ['', 'a', 'b', 'c'];
const QUERIES = ['select 1', 'select 2', 'select 3'];
const MAX_STATEMENTS = 2;
const NO_TYPES = Buffer.from([0, 0]);

type Op =
  | { kind: 'parse'; name: number; query: number }
  | { kind: 'bind'; name: number }
  | { kind: 'describe'; name: number }
  | { kind: 'close'; name: number }
  | { kind: 'execute' }
  | { kind: 'query' };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('parse' as const), name: fc.nat(NAMES.length - 1), query: fc.nat(QUERIES.length - 1) }),
  fc.record({ kind: fc.constant('bind' as const), name: fc.nat(NAMES.length - 1) }),
  fc.record({ kind: fc.constant('describe' as const), name: fc.nat(NAMES.length - 1) }),
  fc.record({ kind: fc.constant('close' as const), name: fc.nat(NAMES.length - 1) }),
  fc.constant({ kind: 'execute' as const }),
  fc.constant({ kind: 'query' as const }),
);
const transaction = fc.record({ client: fc.nat(1), server: fc.nat(1), ops: fc.array(op, { maxLength: 8 }) });

/** A server connection as PostgreSQL keeps it: named statements and the unnamed one, by text. */
class SimServer {
  readonly statements = new ServerStatements(MAX_STATEMENTS);
  readonly named = new Map<string, string>();
  unnamed: string | null = null;
}

/** A client as its driver sees itself: its statements by name, and its own unnamed one. */
class SimClient {
  readonly prepared = new PreparedStatements();
  readonly defs = new Map<string, string>();
  unnamed: string | null = null;
}

function bindMessage(statement: string): Buffer {
  return msg('B', Buffer.concat([Buffer.from(`\0${statement}\0`), Buffer.from([0, 0, 0, 0, 0, 0])]));
}

/** The client's messages for one transaction; only statements the client has are bound or described. */
function clientMessages(c: SimClient, ops: Op[]): { messages: Buffer[]; expected: string[] } {
  const messages: Buffer[] = [];
  const expected: string[] = [];
  for (const o of ops) {
    const name = 'name' in o ? NAMES[o.name] : '';
    const has = name === '' ? c.unnamed !== null : c.defs.has(name);
    switch (o.kind) {
      case 'parse':
        if (name !== '' && c.defs.has(name)) continue; // PostgreSQL refuses a duplicate; drivers close first
        messages.push(buildParse(name, QUERIES[o.query], NO_TYPES));
        if (name === '') c.unnamed = QUERIES[o.query];
        else c.defs.set(name, QUERIES[o.query]);
        expected.push('1');
        break;
      case 'bind':
        if (!has) continue;
        messages.push(bindMessage(name));
        expected.push('2');
        break;
      case 'describe':
        if (!has) continue;
        messages.push(buildTarget('D', 'S', name));
        break;
      case 'close':
        messages.push(buildTarget('C', 'S', name));
        if (name === '') c.unnamed = null;
        else c.defs.delete(name);
        expected.push('3');
        break;
      case 'execute':
        messages.push(msg('E', Buffer.from([0, 0, 0, 0, 0])));
        break;
      case 'query':
        messages.push(buildQuery('select 1'));
        c.unnamed = null; // a simple Query destroys the unnamed statement
        expected.push('Z');
        break;
    }
  }
  messages.push(msg('S'));
  expected.push('Z');
  return { messages, expected };
}

/**
 * What the server answers to one message the proxy sent; `wanted` is the
 * text the client meant, for a Bind or Describe. Returns the reply type,
 * '' for none, or throws when the proxy asked for the wrong statement.
 */
function serve(s: SimServer, m: Buffer, wanted: string | null): string {
  switch (String.fromCharCode(m[0])) {
    case 'P': {
      const { name, query } = readParse(m);
      if (name === '') s.unnamed = query;
      else if (s.named.has(name)) throw new Error(`statement ${name} already exists on the server`);
      else s.named.set(name, query);
      return '1';
    }
    case 'B':
    case 'D': {
      const statement = m[0] === 0x42 ? readBindStatement(m).statement : readTarget(m).name;
      const have = statement === '' ? s.unnamed : s.named.get(statement);
      if (have === undefined || have === null) throw new Error(`statement "${statement}" does not exist on the server`);
      if (wanted !== null && have !== wanted) throw new Error(`statement "${statement}" is "${have}", the client meant "${wanted}"`);
      return m[0] === 0x42 ? '2' : '';
    }
    case 'C': {
      const { kind, name } = readTarget(m);
      if (kind === 'S') {
        if (name === '') s.unnamed = null;
        else s.named.delete(name);
      }
      return '3';
    }
    case 'Q':
      s.unnamed = null;
      return 'Z';
    case 'S':
      return 'Z';
  }
  return '';
}

t.test('rewriting keeps every client on its own statements, and trimming gives it exactly its own completions', async (t) => {
  fc.assert(
    fc.property(fc.array(transaction, { minLength: 1, maxLength: 25 }), (transactions) => {
      const clients = [new SimClient(), new SimClient()];
      const servers = [new SimServer(), new SimServer()];
      for (const tx of transactions) {
        const c = clients[tx.client];
        const s = servers[tx.server];
        // What the client meant by each name, before this transaction's own Parses and Closes.
        const meant = new Map(c.defs);
        let meantUnnamed = c.unnamed;
        const { messages, expected } = clientMessages(c, tx.ops);
        c.prepared.resetPending(); // linked to this server connection (session.link)
        const seen: string[] = [];
        for (const m of messages) {
          const out: Buffer[] = [];
          c.prepared.rewrite(m, s.statements, out);
          // The client's own message is the last one sent for it; the ones before it are the proxy's.
          let wanted: string | null = null;
          if (m[0] === 0x50) {
            const { name, query } = readParse(m);
            if (name === '') meantUnnamed = query;
            else meant.set(name, query);
          } else if (m[0] === 0x42 || (m[0] === 0x44 && m[5] === 0x53)) {
            const name = m[0] === 0x42 ? readBindStatement(m).statement : readTarget(m).name;
            wanted = name === '' ? meantUnnamed : (meant.get(name) ?? null);
          } else if (m[0] === 0x43) {
            const { name } = readTarget(m);
            if (name === '') meantUnnamed = null;
            else meant.delete(name);
          } else if (m[0] === 0x51) meantUnnamed = null;
          for (let i = 0; i < out.length; i++) {
            const reply = serve(s, out[i], i === out.length - 1 ? wanted : null);
            if (reply === '1' || reply === '2' || reply === '3') {
              const kind = reply === '1' ? 'parse' : reply === '2' ? 'bind' : 'close';
              if (!c.prepared.onComplete(kind)) seen.push(reply);
            } else if (reply === 'Z') {
              c.prepared.onReadyForQuery(s.statements);
              seen.push('Z');
            }
          }
          if (s.statements.size > MAX_STATEMENTS) throw new Error(`cache holds ${s.statements.size}`);
        }
        if (seen.join('') !== expected.join('')) throw new Error(`client saw ${seen.join('')}, expected ${expected.join('')}`);
      }
      return true;
    }),
    {
      numRuns: 1500,
      examples: [
        // Found by this test: another client's Close("") destroyed the unnamed statement the server held for client 0.
        [[{ client: 0, server: 1, ops: [{ kind: 'parse', name: 0, query: 0 }] }, { client: 1, server: 1, ops: [{ kind: 'close', name: 0 }] }, { client: 0, server: 1, ops: [{ kind: 'bind', name: 0 }] }]],
        // Found by this test: a client's older unnamed statement, left on another connection, was taken for its current one.
        [[{ client: 1, server: 1, ops: [{ kind: 'parse', name: 0, query: 0 }] }, { client: 1, server: 0, ops: [{ kind: 'parse', name: 0, query: 1 }] }, { client: 1, server: 1, ops: [{ kind: 'bind', name: 0 }] }]],
      ],
    },
  );
});
