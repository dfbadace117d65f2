// client/sqlWords.ts: the byte-level pre-check must say "look closer"
// whenever the regular expressions behind it could match.
import t from 'tap';
import { DROP_WORD, messageSqlWords, RESERVED_MARK, SESSION_WORD, sqlWords } from '../../src/client/sqlWords.js';
import { buildQuery } from '../../src/protocol/messages.js';
import { PreparedStatements } from '../../src/client/prepared.js';
import { msg } from '../helpers/wire.js';

const SESSION = /set|listen|advisory|temp|prepare|hold|load/i;
const DROP = /deallocate|discard/i;

function expected(sql: string): number {
  return (SESSION.test(sql) ? SESSION_WORD : 0) | (DROP.test(sql) ? DROP_WORD : 0) | (sql.includes('__') ? RESERVED_MARK : 0);
}

function flagsOf(sql: string): number {
  const b = Buffer.from(sql, 'utf8');
  return sqlWords(b, 0, b.length);
}

const CORPUS = [
  'SELECT abalance FROM pgbench_accounts WHERE aid = 123;',
  'SET search_path = app',
  'set local work_mem = 1',
  'select set_config($1, $2, false)',
  'LISTEN ch',
  'select pg_advisory_lock(1)',
  'CREATE TEMP TABLE x (a int)',
  'create temporary table y ()',
  'PREPARE p AS SELECT 1',
  'DECLARE c CURSOR WITH HOLD FOR SELECT 1',
  "LOAD 'auto_explain'",
  'DEALLOCATE ALL',
  'discard all',
  'select * from t where name = \'__pgbudget_s1\'',
  'UPDATE t SET x = 1',
  'select offset_col from holder',
  'SeLeCt 1; sEt x = 2',
  'insert into "Tëmp" values (\'ſet\')', // ſ does not fold to s without the u flag
  'select \'K\'', // Kelvin sign
  '',
  's',
  'se',
  '_',
  'select _a_ from b_',
  'the end: se',
];

t.test('agrees with the regular expressions on a corpus', async (t) => {
  for (const sql of CORPUS) t.equal(flagsOf(sql), expected(sql), JSON.stringify(sql));
});

t.test('agrees with the regular expressions on random text', async (t) => {
  const alphabet = 'sSeEtTlLiInNoOaAdDvVrRyYmMpPhHcCuU_ ;\'"$é€';
  let seed = 12345;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  let disagreements = 0;
  for (let i = 0; i < 20000; i++) {
    let sql = '';
    const len = rand(24);
    for (let k = 0; k < len; k++) sql += alphabet[rand(alphabet.length)];
    if (flagsOf(sql) !== expected(sql)) disagreements++;
    // The same SQL inside a Query and a Parse message, read up to its terminator.
    const inQuery = messageSqlWords(buildQuery(sql));
    const inParse = messageSqlWords(msg('P', `s${i}\0${sql}\0\0\0`));
    if (inQuery !== expected(sql) || inParse !== expected(sql)) disagreements++;
  }
  t.equal(disagreements, 0, '20,000 random strings, alone and in Query and Parse messages');
});

t.test('reads the SQL of Query and Parse messages; malformed ones are looked at closely', async (t) => {
  t.equal(messageSqlWords(buildQuery('select 1')), 0);
  t.equal(messageSqlWords(buildQuery('set x = 1')), SESSION_WORD);
  // Parse: the statement name is not SQL.
  t.equal(messageSqlWords(msg('P', 'set_stmt\0select 1\0\0\0')), 0, 'the name is skipped');
  t.equal(messageSqlWords(msg('P', '\0discard all\0\0\0')), DROP_WORD);
  t.equal(messageSqlWords(msg('Q', 'select 1')), SESSION_WORD | DROP_WORD | RESERVED_MARK, 'no terminator');
  t.equal(messageSqlWords(msg('P', 'name-without-end')), SESSION_WORD | DROP_WORD | RESERVED_MARK, 'no terminator');
  t.equal(messageSqlWords(msg('P', 'name\0')), SESSION_WORD | DROP_WORD | RESERVED_MARK, 'a name and no SQL at all');
  t.equal(messageSqlWords(msg('Q', '\0')), 0, 'empty SQL');
  t.equal(messageSqlWords(msg('P', 'n\0\0\0\0')), 0, 'empty SQL after a name');
  t.equal(messageSqlWords(msg('Q', 'set\0discard\0')), SESSION_WORD, 'only up to the terminator');
});

t.test("a client's own memo: its statement's flags survive other clients' statements read in between", async (t) => {
  const a = new PreparedStatements();
  const b = new PreparedStatements();
  const setQuery = buildQuery('set search_path = x');
  const plain = buildQuery('select 1');
  t.equal(a.sqlWords(setQuery), SESSION_WORD);
  // While a's statement waits in the queue, others are read.
  t.equal(b.sqlWords(plain), 0);
  t.equal(messageSqlWords(buildQuery('discard all')), DROP_WORD);
  t.equal(a.sqlWords(setQuery), SESSION_WORD, 'still its own');
  t.equal(a.sqlWords(plain), 0, 'a different message is read afresh');
});
