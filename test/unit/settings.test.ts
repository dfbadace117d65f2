// server/settings.ts: which startup parameters are applied per checkout, and
// the one query that takes a server connection from one client's settings to
// another's (RESET what the next did not ask for, set_config what it did),
// with values quoted whatever standard_conforming_strings is.
import fc from 'fast-check';
import t from 'tap';
import { BASE, clientSettings, literal, mergeReported, perCheckoutName, settingsOf, settingsSql, textValue, UNKNOWN } from '../../src/server/settings.js';

t.test('the parameters applied per checkout, matched without case', async (t) => {
  t.equal(perCheckoutName('timezone'), 'TimeZone');
  t.equal(perCheckoutName('DATESTYLE'), 'DateStyle');
  t.equal(perCheckoutName('search_path'), 'search_path');
  t.equal(perCheckoutName('options'), undefined, 'options still make a pool of their own');
  t.equal(perCheckoutName('work_mem'), undefined);
});

t.test("a client's settings: what it sent, and its application_name ('' when it sent none) unless the service's is kept", async (t) => {
  const s = clientSettings({ user: 'u', database: 'd', TimeZone: 'UTC', options: '-c x=1', timezone: 'UTC' }, '');
  t.same([...s.values], [
    ['TimeZone', 'UTC'],
    ['application_name', ''],
  ]);
  t.equal(clientSettings({ user: 'u' }, null), BASE, 'nothing to apply');
  t.equal(clientSettings({ DateStyle: 'ISO', TimeZone: 'UTC' }, 'a').sig, clientSettings({ TimeZone: 'UTC', DateStyle: 'ISO' }, 'a').sig, 'the order of the packet does not matter');
});

t.test('the settings query: nothing when equal, RESET what is no longer asked for, set_config what changed', async (t) => {
  const a = settingsOf(new Map([['TimeZone', 'UTC'], ['application_name', 'a']]));
  const b = settingsOf(new Map([['DateStyle', 'German'], ['application_name', 'b']]));
  t.equal(settingsSql(a, settingsOf(new Map(a.values))), null);
  t.equal(
    settingsSql(a, b),
    `RESET "TimeZone"; SELECT set_config(E'DateStyle', E'German', false), set_config(E'application_name', E'b', false)`,
  );
  t.equal(settingsSql(b, BASE), 'RESET "DateStyle"; RESET "application_name"');
  t.equal(settingsSql(BASE, a), `SELECT set_config(E'TimeZone', E'UTC', false), set_config(E'application_name', E'a', false)`);
  // After a client's RESET or DISCARD ALL: everything reset, everything set.
  const all = settingsSql(UNKNOWN, a)!;
  t.match(all, /^RESET "client_encoding"; RESET "DateStyle"; RESET "IntervalStyle"; RESET "standard_conforming_strings"; RESET "search_path"; SELECT set_config\(E'TimeZone', E'UTC', false\), set_config\(E'application_name', E'a', false\)$/);
  t.equal(
    settingsSql(UNKNOWN, BASE),
    'RESET "application_name"; RESET "client_encoding"; RESET "DateStyle"; RESET "IntervalStyle"; RESET "TimeZone"; RESET "standard_conforming_strings"; RESET "search_path"',
    'unknown to nothing asked for: everything reset',
  );
});

t.test('literals: quotes and backslashes escaped in E strings, so no value leaves its literal', async (t) => {
  t.equal(literal(`it's`), `E'it''s'`);
  t.equal(literal('a\\b'), `E'a\\\\b'`);
  fc.assert(
    fc.property(fc.string(), (v) => {
      const lit = literal(v);
      // Reading the E'' literal back as PostgreSQL does gives the value, and the literal ends where it should.
      const inner = lit.slice(2, -1);
      let out = '';
      for (let i = 0; i < inner.length; i++) {
        const c = inner[i];
        if (c === '\\') out += inner[++i];
        else if (c === "'") {
          if (inner[i + 1] !== "'") return false;
          out += "'";
          i++;
        } else out += c;
      }
      return out === v && lit.startsWith("E'") && lit.endsWith("'");
    }),
  );
});

t.test("the welcome: the connection's reported values, with those the settings query reported in their place", async (t) => {
  const base: [string, string][] = [
    ['DateStyle', 'ISO, MDY'],
    ['TimeZone', 'Etc/UTC'],
    ['application_name', 'pgbudget:app'],
  ];
  t.equal(mergeReported(base, new Map()), base, 'nothing reported: the same array (its encoding is cached by identity)');
  t.same(mergeReported(base, new Map([['TimeZone', 'Europe/Paris'], ['search_path', 's1']])), [
    ['DateStyle', 'ISO, MDY'],
    ['TimeZone', 'Europe/Paris'],
    ['application_name', 'pgbudget:app'],
    ['search_path', 's1'],
  ]);
});

t.test('a value that is not ASCII goes as the hex of its UTF-8 bytes, so the query is ASCII whatever the encoding left on the connection', async (t) => {
  t.equal(textValue('public'), "E'public'");
  t.equal(textValue('"schéma", public'), "convert_from(decode('22736368c3a96d61222c207075626c6963', 'hex'), 'UTF8')");
  fc.assert(
    fc.property(fc.string({ unit: 'binary' }), (v) => {
      const sql = textValue(v);
      // eslint-disable-next-line no-control-regex
      return /^[\x00-\x7f]*$/.test(sql);
    }),
  );
});
