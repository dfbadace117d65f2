// PgBouncer's auth_file (userlist.txt): one user per line, `"name" "secret"`,
// a double quote inside either written twice; lines that do not start with
// a quote are comments. The secret is a password, an md5 hash or a SCRAM
// verifier (secret.ts).

export interface UserlistEntry {
  user: string;
  secret: string;
}

/** The entries of a userlist file, or the first malformed line (by number, never its content: it may hold a password). */
export function parseUserlist(text: string): { entries: UserlistEntry[] } | { error: string } {
  const entries: UserlistEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (!line.startsWith('"')) continue;
    const user = quoted(line, 0);
    const rest = user ? line.slice(user.end).trimStart() : '';
    const secret = user && rest.startsWith('"') ? quoted(rest, 0) : null;
    if (!user || !secret || user.value === '') return { error: `line ${n + 1}: expected "name" "secret"` };
    entries.push({ user: user.value, secret: secret.value });
  }
  return { entries };
}

/** The quoted string at `start` (which is a quote), with doubled quotes undone, and where it ends. */
function quoted(s: string, start: number): { value: string; end: number } | null {
  let value = '';
  let i = start + 1;
  for (;;) {
    const q = s.indexOf('"', i);
    if (q < 0) return null;
    value += s.slice(i, q);
    if (s[q + 1] !== '"') return { value, end: q + 1 };
    value += '"';
    i = q + 2;
  }
}
