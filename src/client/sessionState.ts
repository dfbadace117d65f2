// Statements that leave state in the server session, which transaction
// pooling cannot carry from one server connection to the next. Found by
// looking at the SQL with comments and quoted text removed; pure.

export type SessionStateReason = 'set' | 'listen' | 'advisory_lock' | 'temp_table' | 'prepare' | 'cursor_with_hold';

export const SESSION_STATE_REASONS: readonly SessionStateReason[] = [
  'set',
  'listen',
  'advisory_lock',
  'temp_table',
  'prepare',
  'cursor_with_hold',
];

/** Removes comments, string literals and quoted identifiers (their contents cannot be commands). */
export function stripSql(sql: string): string {
  return sql
    .replace(/--[^\n]*/g, ' ')
    .replace(/\/\*[\s\S]*?\*\//g, ' ')
    .replace(/\$([A-Za-z_]\w*)?\$[\s\S]*?\$\1\$/g, "''")
    .replace(/'(?:[^']|'')*'/g, "''")
    .replace(/"(?:[^"]|"")*"/g, '""');
}

const RULES: [SessionStateReason, RegExp][] = [
  // SET and SET SESSION, but not SET LOCAL, SET TRANSACTION, SET CONSTRAINTS; also RESET? no state left.
  ['set', /(^|;)\s*set\s+(?!local\b|transaction\b|constraints\b|session\s+characteristics\b)/i],
  ['set', /\bset_config\s*\([^)]*,\s*(false|'f'|'false')\s*\)/i],
  ['listen', /(^|;)\s*listen\s/i],
  ['advisory_lock', /\bpg_(try_)?advisory_lock(_shared)?\s*\(/i],
  ['temp_table', /(^|;)\s*create\s+(global\s+|local\s+)?(temp|temporary)\s+(table|view|sequence)\b/i],
  ['prepare', /(^|;)\s*prepare\s+(?!transaction\b)\w/i],
  ['cursor_with_hold', /(^|;)\s*declare\s[\s\S]*\bwith\s+hold\b/i],
];

/** Every rule needs one of these words; most statements have none and skip the full scan. */
const ANY_KEYWORD = /set|listen|advisory|temp|prepare|hold/i;

/** Why this SQL leaves session state behind, or null. */
export function detectSessionState(sql: string): SessionStateReason | null {
  if (!ANY_KEYWORD.test(sql)) return null;
  const text = stripSql(sql);
  for (const [reason, re] of RULES) if (re.test(text)) return reason;
  return null;
}
