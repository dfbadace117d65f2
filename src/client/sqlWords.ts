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

// What each byte may start, so that the loop looks at most bytes once.
const NONE = 0;
const S = 1; // set
const L = 2; // listen, load
const A = 3; // advisory
const T = 4; // temp
const P = 5; // prepare
const H = 6; // hold
const D = 7; // deallocate, discard
const U = 8; // __
const STARTS = new Uint8Array(256);
for (const [letter, kind] of [
  ['s', S],
  ['l', L],
  ['a', A],
  ['t', T],
  ['p', P],
  ['h', H],
  ['d', D],
] as const) {
  STARTS[letter.charCodeAt(0)] = kind;
  STARTS[letter.toUpperCase().charCodeAt(0)] = kind;
}
STARTS[0x5f] = U;

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
  let flags = 0;
  for (let i = start; i < end; i++) {
    const kind = STARTS[b[i]];
    if (kind === NONE) continue;
    // The next byte, lower-cased (0 past the end): most candidates stop here.
    const n = i + 1 < end ? b[i + 1] | 0x20 : 0;
    switch (kind) {
      case S:
        if (n === 0x65 && follows(b, i + 1, end, 'et')) flags |= SESSION_WORD;
        break;
      case L:
        if ((n === 0x69 && follows(b, i + 1, end, 'isten')) || (n === 0x6f && follows(b, i + 1, end, 'oad'))) flags |= SESSION_WORD;
        break;
      case A:
        if (n === 0x64 && follows(b, i + 1, end, 'dvisory')) flags |= SESSION_WORD;
        break;
      case T:
        if (n === 0x65 && follows(b, i + 1, end, 'emp')) flags |= SESSION_WORD;
        break;
      case P:
        if (n === 0x72 && follows(b, i + 1, end, 'repare')) flags |= SESSION_WORD;
        break;
      case H:
        if (n === 0x6f && follows(b, i + 1, end, 'old')) flags |= SESSION_WORD;
        break;
      case D:
        if ((n === 0x65 && follows(b, i + 1, end, 'eallocate')) || (n === 0x69 && follows(b, i + 1, end, 'iscard'))) flags |= DROP_WORD;
        break;
      case U:
        if (i + 1 < end && b[i + 1] === 0x5f) flags |= RESERVED_MARK;
        break;
    }
  }
  return flags;
}

// One-entry memo: the session's check and the prepared-statement rewrite
// look at the same message one after the other.
let lastMessage: Buffer | null = null;
let lastFlags = 0;

/** The flags of the SQL in a Query ('Q') or Parse ('P') message. */
export function messageSqlWords(msg: Buffer): number {
  if (msg === lastMessage) return lastFlags;
  const start = msg[0] === 0x50 ? msg.indexOf(0, 5) + 1 : 5; // Parse: after the statement name
  const end = start > 0 ? msg.indexOf(0, start) : -1;
  // Malformed (no terminator): say "look closer", and the decoding check reports it.
  const flags = end < 0 ? SESSION_WORD | DROP_WORD | RESERVED_MARK : sqlWords(msg, start, end);
  lastMessage = msg;
  lastFlags = flags;
  return flags;
}
