// The monitoring the chart ships, checked without a cluster: promtool checks
// and unit-tests the alert rules (test/prometheus/rules.test.yaml), every
// dashboard query parses, every alert has its runbook in the README, and the
// chart's templates include these very files. test/integration/prometheus.test.ts
// runs all of it against a real Prometheus scraping a real pgbudget.
import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { alertRules, allPanels, asPromQL, chartDir, dashboardQueries, readDashboard, rulesFile } from '../helpers/monitoring.js';
import { promtool } from '../helpers/prometheus.js';
import { repoRoot } from '../helpers/proxy.js';

const rulesTests = path.join(repoRoot, 'test', 'prometheus', 'rules.test.yaml');
const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8');
const chartFile = (name: string) => readFileSync(path.join(chartDir, name), 'utf8');

async function inTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-monitoring-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

t.test('promtool check rules: the rules file is valid', async (t) => {
  const r = await promtool(['check', 'rules', rulesFile]);
  t.equal(r.code, 0, r.stdout + r.stderr);
});

t.test('promtool test rules: every alert fires for the right series only', async (t) => {
  const r = await promtool(['test', 'rules', rulesTests]);
  t.equal(r.code, 0, r.stdout + r.stderr);
});

t.test('every alert has a unit test that fires it and one that keeps it quiet', async (t) => {
  interface AlertTest {
    alertname: string;
    exp_alerts: unknown[];
  }
  const tests = (parseYaml(readFileSync(rulesTests, 'utf8')) as { tests: { alert_rule_test?: AlertTest[] }[] }).tests.flatMap(
    (x) => x.alert_rule_test ?? [],
  );
  for (const { alert } of alertRules()) {
    const mine = tests.filter((x) => x.alertname === alert);
    t.ok(mine.some((x) => x.exp_alerts.length > 0), `${alert} is tested firing`);
    t.ok(mine.some((x) => x.exp_alerts.length === 0), `${alert} is tested quiet`);
  }
});

/** GitHub's anchor of a heading. */
const anchor = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');

t.test('every alert has a severity, a summary naming the service, a description and a runbook in the README', async (t) => {
  const operations = readme.slice(readme.indexOf('\n## Operations'));
  t.ok(readme.includes('\n## Operations'), 'the README has an Operations section');
  const anchors = new Set([...operations.matchAll(/^#{2,6} (.+)$/gm)].map((m) => anchor(m[1])));
  for (const rule of alertRules()) {
    t.match(rule.labels.severity, /^(warning|critical)$/, `${rule.alert}: severity`);
    // Alerts on one service name it; the others say it is all of them.
    t.match(rule.annotations.summary, /\{\{ \$labels\.service \}\}|every service|no service/, `${rule.alert}: summary names the service`);
    t.ok(rule.annotations.description, `${rule.alert}: description`);
    const url = rule.annotations.runbook_url;
    t.equal(url, `README.md#${anchor(rule.alert)}`, `${rule.alert}: runbook_url`);
    t.ok(anchors.has(anchor(rule.alert)), `${rule.alert}: a runbook section under Operations`);
  }
});

t.test('the dashboard: Grafana variables, data sources, and queries that parse', async (t) => {
  const d = readDashboard();
  t.equal(d.schemaVersion, 39);
  t.equal(d.uid, 'pgbudget');
  const vars = new Map(d.templating.list.map((v) => [v.name, v]));
  t.equal(vars.get('datasource')?.type, 'datasource');
  t.equal(vars.get('datasource')?.query, 'prometheus');
  const service = vars.get('service');
  t.equal(service?.type, 'query');
  t.equal(typeof service?.query === 'object' ? service.query.query : service?.query, 'label_values(pgbudget_service_budget_connections, service)');
  t.ok(service?.multi && service.includeAll, 'service: several at once, or all');
  t.same(service?.datasource, { type: 'prometheus', uid: '${datasource}' });

  const panels = allPanels(d);
  t.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique');
  for (const p of panels.filter((p) => p.type !== 'row')) {
    t.same(p.datasource, { type: 'prometheus', uid: '${datasource}' }, `${p.title}: data source`);
    t.ok(p.targets?.length, `${p.title}: has queries`);
    for (const tg of p.targets ?? []) t.same(tg.datasource, { type: 'prometheus', uid: '${datasource}' }, `${p.title} / ${tg.refId}: data source`);
    t.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title}: fits in the 24 columns`);
  }
  const surges = d.annotations.list.find((a) => a.name === 'Surges');
  t.same(surges?.datasource, { type: 'prometheus', uid: '${datasource}' }, 'surges are annotations from Prometheus');
  t.match(surges?.expr, /pgbudget_service_surge/);

  // What the issue asks of the panels, by the series they read.
  const exprs = dashboardQueries(d).map((q) => q.expr);
  const reads = (re: RegExp) => exprs.some((e) => re.test(e));
  t.ok(reads(/pgbudget_service_utilization_ratio/), 'utilisation against budget');
  t.ok(reads(/pgbudget_server_connections\{/) && reads(/pgbudget_service_budget_connections/), 'held against budget');
  t.ok(reads(/pgbudget_clients_waiting/), 'waiting clients');
  t.ok(reads(/histogram_quantile\(0\.5,.*pgbudget_queue_wait_seconds_bucket/), 'wait p50');
  t.ok(reads(/histogram_quantile\(0\.99,.*pgbudget_queue_wait_seconds_bucket/), 'wait p99');
  t.ok(reads(/sum by \(service, reason\) \(rate\(pgbudget_rejections_total/), 'timeouts and rejections by reason');
  t.ok(reads(/rate\(pgbudget_client_connection_attempts_total/), 'the connect rate');
  t.ok(reads(/pgbudget_upstream_max_connections/) && reads(/pgbudget_database_max_connections/), 'connections against the cap and max_connections');

  // promtool has no linter for a bare PromQL expression, but it parses
  // every expression of a rule file: each query becomes a recording rule.
  await inTempDir(async (dir) => {
    const file = path.join(dir, 'dashboard-queries.yaml');
    const rules = dashboardQueries(d).map((q, i) => ({ record: `dashboard:query_${i}`, expr: asPromQL(q.expr) }));
    await writeFile(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
    const r = await promtool(['check', 'rules', file]);
    t.equal(r.code, 0, `every dashboard query parses:\n${r.stdout}${r.stderr}`);
  });
});

t.test('the chart ships these files, off by default', async (t) => {
  const values = parseYaml(chartFile('values.yaml')) as {
    dashboards: { enabled: boolean; labels: Record<string, string> };
    prometheusRule: { enabled: boolean; jobSelector: string; runbookBaseUrl: string };
  };
  t.equal(values.dashboards.enabled, false);
  t.equal(values.prometheusRule.enabled, false);
  t.same(values.dashboards.labels, { grafana_dashboard: '1' }, "Grafana's sidecar label");

  const dashboards = chartFile('templates/dashboards.yaml');
  t.match(dashboards, '{{- if .Values.dashboards.enabled }}');
  t.match(dashboards, '.Files.Get "dashboards/pgbudget.json"');
  t.ok(existsSync(path.join(chartDir, 'dashboards', 'pgbudget.json')));

  const rule = chartFile('templates/prometheusrule.yaml');
  t.match(rule, '{{- if .Values.prometheusRule.enabled }}');
  t.match(rule, 'kind: PrometheusRule');
  t.match(rule, '.Files.Get "rules/pgbudget-rules.yaml"');
  // The template replaces the job selector written in the rules file by the
  // configured one, and puts the runbook base in front of README.md#.
  const replaced = [...rule.matchAll(/replace `([^`]+)` \.Values\.prometheusRule\.jobSelector/g)].map((m) => m[1]);
  t.same(replaced, [values.prometheusRule.jobSelector], 'the selector it replaces is the default one');
  const rules = readFileSync(rulesFile, 'utf8');
  const notScraped = alertRules().find((r) => r.alert === 'PgbudgetNotScraped')!;
  t.equal(notScraped.expr.split(values.prometheusRule.jobSelector).length - 1, 2, 'both arms of PgbudgetNotScraped use it');
  t.equal(rules.split(values.prometheusRule.jobSelector).length - 1, 2, 'and nothing else does');
  t.match(rule, 'replace "runbook_url: README.md#" (printf "runbook_url: %sREADME.md#" .Values.prometheusRule.runbookBaseUrl)');
  t.equal(rules.split('runbook_url: README.md#').length - 1, alertRules().length, 'every runbook_url starts so');

  // What the template makes of the file with another selector and a base is
  // still a valid rule file.
  await inTempDir(async (dir) => {
    const file = path.join(dir, 'rendered.yaml');
    const rendered = rules
      .replaceAll(values.prometheusRule.jobSelector, 'job="kubernetes-pods", app_kubernetes_io_name="pgbudget"')
      .replaceAll('runbook_url: README.md#', 'runbook_url: https://git.example.com/platform/pgbudget/blob/main/README.md#');
    await writeFile(file, rendered);
    const r = await promtool(['check', 'rules', file]);
    t.equal(r.code, 0, r.stdout + r.stderr);
    const expr = (parseYaml(rendered) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups[0].rules.find(
      (x) => x.alert === 'PgbudgetNotScraped',
    )!.expr;
    t.match(expr, 'absent(up{job="kubernetes-pods", app_kubernetes_io_name="pgbudget"})');
  });
});
