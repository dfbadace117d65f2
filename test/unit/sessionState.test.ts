import t from 'tap';
import { detectSessionState } from '../../src/client/sessionState.js';

t.test('statements that keep session state', async (t) => {
  const cases: [string, string | null][] = [
    ['SET search_path = a', 'set'],
    ['set session timezone to utc', 'set'],
    ["select set_config('search_path', 'a', false)", 'set'],
    ['LISTEN chan', 'listen'],
    ['select pg_advisory_lock(1)', 'advisory_lock'],
    ['SELECT pg_try_advisory_lock_shared(1, 2)', 'advisory_lock'],
    ['create temp table x(a int)', 'temp_table'],
    ['CREATE TEMPORARY TABLE x AS SELECT 1', 'temp_table'],
    ['prepare p as select 1', 'prepare'],
    ['declare c cursor with hold for select 1', 'cursor_with_hold'],
    ['select 1; set work_mem = 1', 'set'],
    ['SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY', 'set'],
    ['PREPARE "q" AS select 1', 'prepare'],
    ["select '--'; set search_path = evil", 'set'],
    ['select $$--$$; set search_path = evil', 'set'],
    ["select E'\\''; set search_path = evil", 'set'],
    ["select set_config('a', 'b', 'f')", 'set'],
    ['create or replace temp view v as select 1', 'temp_table'],
    ['select 1 into temp t', 'temp_table'],
    ['create table pg_temp.t(a int)', 'temp_table'],
    ["LOAD 'auto_explain'", 'load'],
  ];
  for (const [sql, reason] of cases) t.equal(detectSessionState(sql), reason, sql);
});

t.test('statements that do not', async (t) => {
  const none = [
    'SET LOCAL search_path = a',
    'set transaction isolation level serializable',
    'SET CONSTRAINTS ALL DEFERRED',
    "select set_config('a.b', 'c', true)",
    "select 'SET x = 1'",
    '-- SET x = 1\nselect 1',
    '/* listen foo */ select 1',
    'select pg_advisory_xact_lock(1)',
    'update t set a = 1',
    'insert into offsets values (1)',
    'PREPARE TRANSACTION \'x\'',
    'select $tag$ LISTEN x $tag$',
    'declare c cursor for select 1',
    'select "set" from t',
    'create temp table t(a int) on commit drop',
    "select set_config('a', format('%s', 1), true)",
  ];
  for (const sql of none) t.equal(detectSessionState(sql), null, sql);
});
