// What the chart ships for monitoring, read the way Grafana and Prometheus
// read it: the alert rules (helm/pgbudget/rules/pgbudget-rules.yaml) and the
// dashboard's queries (helm/pgbudget/dashboards/pgbudget.json), with
// Grafana's variables replaced so that Prometheus can run them.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { repoRoot } from './proxy.js';

export const chartDir = path.join(repoRoot, 'helm', 'pgbudget');
export const rulesFile = path.join(chartDir, 'rules', 'pgbudget-rules.yaml');
export const dashboardFile = path.join(chartDir, 'dashboards', 'pgbudget.json');

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface RuleFile {
  groups: { name: string; rules: AlertRule[] }[];
}

export function readRuleFile(): RuleFile {
  return parseYaml(readFileSync(rulesFile, 'utf8')) as RuleFile;
}

export function alertRules(): AlertRule[] {
  return readRuleFile().groups.flatMap((g) => g.rules);
}

/** Seconds in a Prometheus duration such as 5m or 1h30m (0 for none). */
export function durationSeconds(d: string | undefined): number {
  const unit: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 };
  let total = 0;
  for (const m of (d ?? '').matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)) total += Number(m[1]) * unit[m[2]];
  return total;
}

export interface GrafanaTarget {
  expr: string;
  refId?: string;
  legendFormat?: string;
  datasource?: { type: string; uid: string };
}

export interface GrafanaPanel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: GrafanaTarget[];
  panels?: GrafanaPanel[];
}

export interface GrafanaDashboard {
  schemaVersion: number;
  uid: string;
  title: string;
  panels: GrafanaPanel[];
  annotations: { list: { name: string; expr?: string; datasource?: { type: string; uid: string }; builtIn?: number }[] };
  templating: {
    list: {
      name: string;
      type: string;
      query: string | { query: string };
      multi?: boolean;
      includeAll?: boolean;
      datasource?: { type: string; uid: string };
    }[];
  };
}

export function readDashboard(): GrafanaDashboard {
  return JSON.parse(readFileSync(dashboardFile, 'utf8')) as GrafanaDashboard;
}

/** Every panel, those inside collapsed rows included. */
export function allPanels(d: GrafanaDashboard): GrafanaPanel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** One PromQL query of the dashboard: a panel's target or an annotation's. */
export interface DashboardQuery {
  /** "panel title / refId" or "annotation name" */
  where: string;
  expr: string;
}

export function dashboardQueries(d: GrafanaDashboard = readDashboard()): DashboardQuery[] {
  const panels = allPanels(d).flatMap((p) => (p.targets ?? []).map((tg) => ({ where: `${p.title} / ${tg.refId}`, expr: tg.expr })));
  const annotations = d.annotations.list.filter((a) => a.expr).map((a) => ({ where: `annotation ${a.name}`, expr: a.expr! }));
  return [...panels, ...annotations];
}

/**
 * The query as Grafana sends it: $service (multi-value, all selected) as a
 * regex, $__rate_interval and the other interval variables as `rateInterval`.
 */
export function asPromQL(expr: string, rateInterval = '1m'): string {
  return expr
    .replace(/\$\{service(:[a-z]+)?\}|\$service\b/g, '.+')
    .replace(/\$\{?__(rate_interval|interval|range)\}?/g, rateInterval);
}

/** The pgbudget metric names a query reads. */
export function metricNames(expr: string): string[] {
  return [...new Set(expr.match(/\bpgbudget_[a-z0-9_]+\b/g) ?? [])];
}
