// Which of the words the proxy's SQL checks look for occur in a statement,
// read from the message bytes without decoding them. Most statements have
// none, and then neither the text is decoded nor a regular expression run:
// under pgbench -S that was about 3k instructions per transaction, an
// eighth of the proxy's. A hit only means "look closer": the checks that
// decode and parse (sessionState.ts, prepared.ts) decide.
//
// Matching is ASCII case-insensitive and anywhere in the text, as the
// regular expressions it stands in front of (/set|listen|…/i: without the
// u flag, no non-ASCII character folds to an ASCII letter).

/** set, listen, advisory, temp, prepare, hold, load: the words every session-state rule needs. */
export const SESSION_WORD = 1;
/** deallocate, discard: statements that may drop prepared statements. */
export const DROP_WORD = 2;
/** "__": the start of the proxy's reserved statement names. */
export const RESERVED_MARK = 4;

// Every word is found by its first two bytes: a 64 KiB table indexed by a
// byte pair says which word (if any) the pair may start, so the loop does
// one lookup per byte and branches only on a hit (about half the cost of
// testing first letters one by one, which mispredicts on every other byte).
const SET = 1;
const LISTEN = 2;
const LOAD = 3;
const ADVISORY = 4;
const TEMP = 5;
const PREPARE = 6;
const HOLD = 7;
const DEALLOCATE = 8;
const DISCARD = 9;
const UNDERSCORES = 10;

/** For each word: its family, and the bytes after its first two (ASCII lower case). */
const WORDS: [string, number, number, string][] = [
  ['se', SET, SESSION_WORD, 't'],
  ['li', LISTEN, SESSION_WORD, 'sten'],
  ['lo', LOAD, SESSION_WORD, 'ad'],
  ['ad', ADVISORY, SESSION_WORD, 'visory'],
  ['te', TEMP, SESSION_WORD, 'mp'],
  ['pr', PREPARE, SESSION_WORD, 'epare'],
  ['ho', HOLD, SESSION_WORD, 'ld'],
  ['de', DEALLOCATE, DROP_WORD, 'allocate'],
  ['di', DISCARD, DROP_WORD, 'scard'],
];
const PAIRS = new Uint8Array(65536);
const REST: string[] = [];
const FLAG: number[] = [];
for (const [pair, id, flag, rest] of WORDS) {
  for (const first of [pair[0], pair[0].toUpperCase()]) {
    for (const second of [pair[1], pair[1].toUpperCase()]) PAIRS[(first.charCodeAt(0) << 8) | second.charCodeAt(0)] = id;
  }
  REST[id] = rest;
  FLAG[id] = flag;
}
PAIRS[0x5f5f] = UNDERSCORES;
REST[UNDERSCORES] = '';
FLAG[UNDERSCORES] = RESERVED_MARK;

/** Whether the ASCII lower-case `rest` follows at `at` (ASCII case-insensitive). */
function follows(b: Uint8Array, at: number, end: number, rest: string): boolean {
  if (at + rest.length > end) return false;
  for (let k = 0; k < rest.length; k++) {
    const c = b[at + k];
    if ((c >= 0x41 && c <= 0x5a ? c | 0x20 : c) !== rest.charCodeAt(k)) return false;
  }
  return true;
}

/** The flags of the words found in bytes [start, end). */
export function sqlWords(b: Uint8Array, start: number, end: number): number {
  return scan(b, start, end, false);
}

/**
 * One pass over the bytes: with `toNul`, it stops at the first NUL (a
 * message's string terminator) and returns -1 when there is none before
 * `end`. Words never contain a NUL, so stopping there finds what a scan up
 * to it would.
 */
function scan(b: Uint8Array, start: number, end: number, toNul: boolean): number {
  if (start >= end) return toNul ? -1 : 0;
  let flags = 0;
  let prev = b[start];
  if (prev === 0 && toNul) return 0;
  for (let i = start + 1; i < end; i++) {
    const c = b[i];
    if (c === 0 && toNul) return flags;
    const id = PAIRS[(prev << 8) | c];
    prev = c;
    if (id !== 0 && (flags & FLAG[id]) === 0 && follows(b, i + 1, end, REST[id])) flags |= FLAG[id];
  }
  return toNul ? -1 : flags;
}

/**
 * Malformed (no terminator): "look closer". The session never gets here
 * with such a message: protocol/messages.ts frontendProblem() finds it
 * first and the client gets 08P01 naming it.
 */
const MALFORMED = SESSION_WORD | DROP_WORD | RESERVED_MARK;

/**
 * The flags of the SQL in a Query ('Q') or Parse ('P') message. Not
 * remembered here: PreparedStatements.sqlWords keeps each client's last answer.
 */
export function messageSqlWords(msg: Buffer): number {
  const n = msg.length;
  let start = 5;
  if (msg[0] === 0x50) {
    // Parse: the SQL follows the statement name (usually empty or short: a
    // loop here costs less than a call into Buffer.indexOf).
    while (start < n && msg[start] !== 0) start++;
    start++;
  }
  const found = start < n ? scan(msg, start, n, true) : -1;
  return found < 0 ? MALFORMED : found;
}
