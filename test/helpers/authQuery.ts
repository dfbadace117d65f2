// The auth.query setup the README shows (Security), run as written: the
// SECURITY DEFINER lookup function and the grants to a lookup role, so the
// tests prove the README's own SQL.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Cluster } from './cluster.js';
import { repoRoot } from './proxy.js';

/** The query a proxy runs with that function. */
export const LOOKUP_SQL = 'SELECT * FROM pgbudget.user_lookup($1)';

/** The README's lookup function and grants, for `role` (which the caller has created, with its pg_hba line). */
export async function createLookupFunction(cluster: Cluster, role: string): Promise<void> {
  const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
  const block = /```sql\n([\s\S]*?pgbudget\.user_lookup[\s\S]*?)```/.exec(readme);
  if (!block) throw new Error('README.md: the auth.query SQL block is missing');
  const sql = block[1]
    .split('\n')
    .filter((line) => !/^\s*CREATE ROLE /.test(line))
    .join('\n')
    .replaceAll('pgbudget_lookup', `"${role}"`);
  await cluster.query(sql);
}
