// Statements that leave state in the server session, which transaction
// pooling cannot carry from one server connection to the next. Found by
// looking at the SQL with comments and quoted text removed; pure.

export type SessionStateReason = 'set' | 'listen' | 'advisory_lock' | 'temp_table' | 'prepare' | 'cursor_with_hold' | 'load';

export const SESSION_STATE_REASONS: readonly SessionStateReason[] = [
  'set',
  'listen',
  'advisory_lock',
  'temp_table',
  'prepare',
  'cursor_with_hold',
  'load',
];

/**
 * Removes comments, string literals (with E'' backslash escapes), dollar
 * quotes and quoted identifiers, left to right, so that a quote inside a
 * comment or a comment marker inside a string cannot hide a command.
 * Quoted identifiers become `"q"`, so a quoted name still reads as a name.
 */
export function stripSql(sql: string): string {
  let out = '';
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i];
    const next = sql[i + 1];
    if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i);
      i = end < 0 ? n : end;
      out += ' ';
    } else if (c === '/' && next === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') (depth++, (i += 2));
        else if (sql[i] === '*' && sql[i + 1] === '/') (depth--, (i += 2));
        else i++;
      }
      out += ' ';
    } else if (c === "'") {
      const escapes = /[eE]/.test(sql[i - 1] ?? '') && !/\w/.test(sql[i - 2] ?? '');
      i++;
      while (i < n) {
        if (escapes && sql[i] === '\\') i += 2;
        else if (sql[i] === "'" && sql[i + 1] === "'") i += 2;
        else if (sql[i] === "'") break;
        else i++;
      }
      i++;
      out += "''";
    } else if (c === '"') {
      i++;
      while (i < n) {
        if (sql[i] === '"' && sql[i + 1] === '"') i += 2;
        else if (sql[i] === '"') break;
        else i++;
      }
      i++;
      out += '"q"';
    } else if (c === '$' && !/\w/.test(sql[i - 1] ?? '')) {
      const tag = /^\$([A-Za-z_]\w*)?\$/.exec(sql.slice(i, i + 64));
      if (!tag) {
        out += c;
        i++;
        continue;
      }
      const end = sql.indexOf(tag[0], i + tag[0].length);
      i = end < 0 ? n : end + tag[0].length;
      out += "''";
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const RULES: [SessionStateReason, RegExp][] = [
  // SET and SET SESSION (characteristics too), but not SET LOCAL, SET TRANSACTION, SET CONSTRAINTS.
  ['set', /(^|;)\s*set\s+(?!local\b|transaction\b|constraints\b)/i],
  // set_config(name, value, is_local): session-wide unless is_local is literally true.
  ['set', /\bset_config\s*\((?![^;]*,\s*(true|'t'|'true'|'on'|1)\s*\))/i],
  ['listen', /(^|;)\s*listen\s/i],
  ['advisory_lock', /\bpg_(try_)?advisory_lock(_shared)?\s*\(/i],
  [
    'temp_table',
    /(^|;)\s*create\s+(or\s+replace\s+)?(global\s+|local\s+)?(temp|temporary)\s+(table|view|sequence)\b(?![^;]*\bon\s+commit\s+drop\b)/i,
  ],
  ['temp_table', /\binto\s+(temp|temporary)\s+(table\s+)?\w/i],
  ['temp_table', /(^|;)\s*create\s+(table|view|sequence)\s+pg_temp\./i],
  ['prepare', /(^|;)\s*prepare\s+(?!transaction\b)(\w|")/i],
  ['cursor_with_hold', /(^|;)\s*declare\s[\s\S]*\bwith\s+hold\b/i],
  ['load', /(^|;)\s*load\s/i],
];

/** Every rule needs one of these words; most statements have none and skip the full scan. */
const ANY_KEYWORD = /set|listen|advisory|temp|prepare|hold|load/i;

/** Why this SQL leaves session state behind, or null. */
export function detectSessionState(sql: string): SessionStateReason | null {
  if (!ANY_KEYWORD.test(sql)) return null;
  const text = stripSql(sql);
  for (const [reason, re] of RULES) if (re.test(text)) return reason;
  return null;
}
