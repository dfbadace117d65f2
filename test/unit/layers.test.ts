// The direction of dependencies, checked on the source: cli → proxy, admin,
// metrics, config, coordination → client, server → budget, protocol, io, with the shared
// types (types/) at the bottom; top (`pgbudget top`, a client of the admin
// API over HTTP) reads the types alone. An import that points up fails here.
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../helpers/proxy.js';

const src = path.join(repoRoot, 'src');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** The folder of src/ a file belongs to ('' for the files at the top). */
function layerOf(file: string): string {
  const rel = path.relative(src, file);
  return rel.includes(path.sep) ? rel.split(path.sep)[0] : rel.replace(/\.ts$/, '');
}

/** What each folder may import from the project, besides itself. */
const ALLOWED: Record<string, readonly string[]> = {
  types: [],
  budget: [],
  protocol: ['io'],
  io: [],
  auth: [],
  errors: ['protocol'],
  server: ['types', 'budget', 'protocol', 'io', 'errors', 'auth'],
  client: ['types', 'budget', 'protocol', 'io', 'errors', 'auth'],
  config: ['types'],
  // Leases in Redis for the pool's connections; the pool sees it only through its LeaseGate interface.
  coordination: ['types', 'budget'],
  proxy: ['types', 'budget', 'protocol', 'io', 'errors', 'auth', 'client', 'server', 'config', 'coordination'],
  metrics: ['types', 'budget'],
  admin: ['types', 'metrics'],
  embedded: [],
  top: ['types'],
  app: ['types', 'proxy', 'admin', 'metrics'],
  cli: ['types', 'app', 'config', 'embedded', 'top'],
};

t.test('every import points down', async (t) => {
  const up: string[] = [];
  for (const file of files(src)) {
    const from = layerOf(file);
    const allowed = ALLOWED[from];
    if (!allowed) {
      up.push(`${path.relative(src, file)}: folder "${from}" has no place in the layering (add it to ALLOWED)`);
      continue;
    }
    const text = readFileSync(file, 'utf8');
    // Static imports and exports, and dynamic import('./…') too.
    for (const m of [...text.matchAll(/^(?:import|export)\b[^;]*?from '(\.[^']+)'/gms), ...text.matchAll(/\bimport\(\s*'(\.[^']+)'\s*\)/g)]) {
      const to = layerOf(path.resolve(path.dirname(file), m[1]).replace(/\.js$/, '.ts'));
      if (to !== from && !allowed.includes(to)) up.push(`${path.relative(src, file)} imports ${m[1]} (${from} → ${to})`);
    }
  }
  t.same(up, [], 'no import against the direction');
});
