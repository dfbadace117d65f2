// README.md's configuration table is the one the schema renders, so a field
// added, removed, re-defaulted or re-described without the README fails here;
// and the example configs users copy are valid.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { configRows, configTable } from '../../src/config/docs.js';
import { validateConfig } from '../../src/config/schema.js';

const repoFile = (name: string) => readFileSync(new URL(`../../../${name}`, import.meta.url), 'utf8');
const readme = repoFile('README.md');

/** The lines of the table under "## Configuration reference". */
function readmeTable(): string[] {
  const lines = readme.slice(readme.indexOf('## Configuration reference')).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const end = lines.findIndex((l, i) => i > start && !l.startsWith('|'));
  return lines.slice(start, end);
}

t.test("README.md's configuration table is the schema's", async (t) => {
  t.same(readmeTable(), configTable().split('\n'), 'out of date: `npm run config-table` prints the table to paste');
});

t.test('every field has a meaning and a default', async (t) => {
  const rows = configRows();
  t.same(
    rows.filter((r) => r.meaning === '' || r.default === '').map((r) => r.field),
    [],
  );
  const byField = new Map(rows.map((r) => [r.field, r.default]));
  t.equal(byField.get('listen'), '`127.0.0.1:6432`');
  t.equal(byField.get('upstream.maxConnections'), '`40`');
  t.equal(byField.get('services[]'), 'required');
  t.equal(byField.get('services[].budget'), 'required');
  t.equal(byField.get('services[].match'), '`{}`');
  t.equal(byField.get('services[].queryTimeoutMs'), 'the global value');
  t.equal(byField.get('defaultService'), 'none');
});

t.test("the README's YAML examples and the Helm chart's config are valid", async (t) => {
  const examples = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]);
  t.ok(examples.length > 0, 'the README has an example');
  for (const example of examples) t.doesNotThrow(() => validateConfig(parseYaml(example)), example.split('\n')[0]);
  const chart = parseYaml(repoFile('helm/pgbudget/values.yaml')) as { config: unknown };
  t.doesNotThrow(() => validateConfig(chart.config), 'helm/pgbudget/values.yaml');
});
