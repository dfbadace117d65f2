import t from 'tap';
import { buildParse, buildQuery, readBindStatement, readParse, readQuery, rewriteBindStatement } from '../../src/protocol/messages.js';
import { msg } from '../helpers/wire.js';

const bind = (portal: string, statement: string, rest: Buffer) =>
  msg('B', Buffer.concat([Buffer.from(`${portal}\0`), Buffer.from(`${statement}\0`), rest]));
// One text parameter "123", no result formats.
const rest = Buffer.from([0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 0x31, 0x32, 0x33, 0, 0]);

t.test('rewriteBindStatement swaps only the statement name', async (t) => {
  for (const [portal, from, to] of [
    ['', 'stmt', '__pgbudget_ab_12'],
    ['portal1', 's', 'x'],
    ['', 'été', 'ünïcode'],
    ['p', '', 'named'],
  ]) {
    const got = rewriteBindStatement(bind(portal, from, rest), to);
    t.ok(got.equals(bind(portal, to, rest)), `${portal}/${from} -> ${to}`);
    t.same(readBindStatement(got), { portal, statement: to, restOffset: got.length - rest.length });
  }
  t.doesNotThrow(() => rewriteBindStatement(msg('B', 'no terminator'), 'x'), 'unchecked bytes are read as they are, never thrown on');
});

t.test('Parse and Query read back what was built, also when asked twice', async (t) => {
  const types = Buffer.from([0, 1, 0, 0, 0, 23]);
  const p = buildParse('s1', 'select $1::int', types);
  t.same(readParse(p), { name: 's1', query: 'select $1::int', paramTypes: types });
  t.equal(readParse(p), readParse(p), 'the last decoding is reused');
  const q = buildQuery('select ünï');
  t.equal(readQuery(q), 'select ünï');
  t.equal(readQuery(buildQuery('other')), 'other', 'another message is decoded afresh');
});
