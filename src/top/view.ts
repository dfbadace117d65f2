// `pgbudget top`'s screen as lines of text: data in, lines out, no I/O. Every
// line fits the width it is given (80 columns at least), in plain ASCII so
// that it reads the same over `kubectl exec`, in a log, or on any font;
// colour, when asked for, is wrapped around text already laid out.
import type { ProxySnapshot, ServiceSnapshot } from '../types/snapshot.js';
import type { ServiceRates, WaitQuantile } from './rates.js';

/** What one refresh knows. */
export interface Frame {
  /** The admin API's address, as given. */
  admin: string;
  /** When this frame was made. */
  at: Date;
  /** The last /status read; null before the first that succeeded. */
  status: ProxySnapshot | null;
  /** When `status` was read, if that was before `at` (the latest refresh failed). */
  statusAt: Date | null;
  /** Per service, what /metrics said; a service missing here shows "-". */
  rates: ReadonlyMap<string, ServiceRates>;
  /** Why the latest refresh failed, if it did. */
  error: string | null;
  /** Why /metrics could not be read while /status could. */
  metricsError: string | null;
}

export interface ViewOptions {
  /** Columns; below 80 taken as 80. */
  width: number;
  /** Rows, or null for as many lines as there are services (`--once`). */
  height: number | null;
  color: boolean;
  /** Seconds between refreshes, said in the title; null for one frame. */
  refreshSeconds: number | null;
}

export const MIN_WIDTH = 80;

type Style = 'bold' | 'dim' | 'red' | 'yellow' | 'inverse';
const SGR: Record<Style, string> = { bold: '1', dim: '2', red: '31', yellow: '33', inverse: '7' };

/** Text in a style (SGR), or as it is without colour. */
type Paint = (text: string, ...styles: Style[]) => string;
const plain: Paint = (text) => text;
const ansi: Paint = (text, ...styles) => (styles.length === 0 || text === '' ? text : `\x1b[${styles.map((s) => SGR[s]).join(';')}m${text}\x1b[0m`);

export const LEGEND = '# in use  + opening/closing  = idle  . free  > waiting beyond budget';
/** The legend's addition with coordination: budget slots this instance may not use now (others hold them, or its fair share is less). */
export const LEGEND_CLUSTER = '  - others\'';

/** The columns after the bar: header, width. */
const COLUMNS = [
  ['HELD', 7],
  ['WAIT', 5],
  ['p50', 6],
  ['p99', 6],
  ['TMO/s', 6],
  ['CONN/s', 6],
  ['SURGE', 5],
] as const;
const NAME_WIDTH = 12;
const NAME_WIDTH_MAX = 32;
const BAR_WIDTH_MAX = 60;

/** The screen for `frame`, one string per line, none wider than the width. */
export function renderFrame(frame: Frame, opts: ViewOptions): string[] {
  const width = Math.max(MIN_WIDTH, Math.floor(opts.width) || MIN_WIDTH);
  const paint = opts.color ? ansi : plain;
  const lines: Line[] = [];
  const when = frame.statusAt !== null && frame.status !== null ? `  (as of ${clock(frame.statusAt)})` : '';
  lines.push(spread(
    [[`pgbudget top  ${frame.admin}`, ['bold']]],
    [[`${when}  ${clock(frame.at)}${opts.refreshSeconds === null ? '' : `  every ${fmtNumber(opts.refreshSeconds)}s`}`, []]],
    width,
  ));
  if (frame.error !== null) lines.push(...wrap(`! ${frame.error}`, width).map((l): Line => [[l, ['red', 'bold']]]));
  if (frame.status === null) {
    if (frame.error === null) lines.push([['waiting for the first answer...', ['dim']]]);
    return lines.map((l) => fit(l, width, paint));
  }
  lines.push(upstreamLine(frame.status.upstream));
  lines.push(databaseLine(frame.status.database));
  const cluster = frame.status.coordination ?? null;
  if (cluster !== null) lines.push(clusterLine(cluster));
  if (cluster !== null && !cluster.up && cluster.lastError) lines.push(...wrap(`! redis: ${cluster.lastError}`, width).map((l): Line => [[l, ['red']]]));
  if (frame.metricsError !== null) lines.push(...wrap(`! /metrics: ${frame.metricsError}`, width).map((l): Line => [[l, ['yellow']]]));
  lines.push([]);

  const nameWidth = Math.min(
    NAME_WIDTH_MAX,
    Math.max(NAME_WIDTH, ...frame.status.services.map((s) => s.name.length)),
    NAME_WIDTH + Math.max(0, width - MIN_WIDTH),
  );
  const fixed = nameWidth + COLUMNS.reduce((n, [, w]) => n + w + 1, 0) + 1 + 2;
  const barWidth = Math.min(BAR_WIDTH_MAX, width - fixed);
  lines.push(
    [[pad('SERVICE', nameWidth) + ' ' + pad('BUDGET', barWidth + 2) + COLUMNS.map(([h, w]) => ' ' + pad(h, w, 'right')).join(''), ['bold']]],
  );

  const services = sortServices(frame.status.services);
  const clusterRows = cluster === null ? [] : clusterServiceLines(cluster, nameWidth);
  const legend = LEGEND + (cluster === null ? '' : LEGEND_CLUSTER) + (opts.refreshSeconds === null ? '' : '   q quits');
  const footer: Line[] = [...(clusterRows.length > 0 ? [[], ...clusterRows] : []), [], [[legend, ['dim']]]];
  let shown = services.length;
  if (opts.height !== null) {
    const room = opts.height - lines.length - footer.length;
    if (services.length > room) shown = Math.max(0, room - 1);
  }
  const ceilings = new Map(cluster?.services.map((s) => [s.name, s.ceiling]) ?? []);
  for (const s of services.slice(0, shown)) lines.push(serviceRow(s, frame.rates.get(s.name) ?? null, ceilings.get(s.name) ?? null, nameWidth, barWidth));
  if (shown < services.length) lines.push([[`... ${services.length - shown} more service(s) below; a taller window shows them`, ['dim']]]);
  lines.push(...footer);
  return lines.map((l) => fit(l, width, paint));
}

/** Pressing services first: the most clients waiting, then the fullest budget, then by name. */
export function sortServices(services: readonly ServiceSnapshot[]): ServiceSnapshot[] {
  const fullness = (s: ServiceSnapshot) => (s.budget > 0 ? s.serverConnections.total / s.budget : s.serverConnections.total);
  return [...services].sort(
    (a, b) => b.clients.waiting - a.clients.waiting || fullness(b) - fullness(a) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
}

/** A line as pieces of text, each with its styles. */
type Line = [string, Style[]][];

function serviceRow(s: ServiceSnapshot, rates: ServiceRates | null, ceiling: number | null, nameWidth: number, barWidth: number): Line {
  const c = s.serverConnections;
  // A dry run's clients beyond its budget are served, but would wait if it were enforced: drawn as waiting.
  const beyond = s.clients.waiting + (s.enforced === false ? s.wouldBeWaiting : 0);
  // Replication connections are in use too (a pgbudget before them has none: `?? 0`).
  const bar = budgetBar(
    { active: Math.min(c.active + (c.replication ?? 0), s.budget), changing: c.opening + c.closing, idle: c.idle, waiting: beyond, budget: s.budget, ceiling },
    barWidth,
  );
  const cells: [string, Style[]][] = [
    [`${c.total}/${s.budget}`, c.total >= s.budget ? ['bold'] : []],
    [String(s.clients.waiting), s.clients.waiting > 0 ? ['yellow', 'bold'] : []],
    [fmtWait(rates?.p50 ?? null), []],
    [fmtWait(rates?.p99 ?? null), []],
    [fmtRate(rates?.timeoutsPerSecond ?? null), (rates?.timeoutsPerSecond ?? 0) > 0 ? ['red'] : []],
    [fmtRate(rates?.connectsPerSecond ?? null), []],
    rates?.surge
      ? ['SURGE', ['red', 'bold', 'inverse']]
      : s.enforced === false
        ? ['dry', ['yellow']]
        : [rates?.surge == null ? '-' : 'no', []],
  ];
  const line: Line = [[pad(ellipsize(s.name, nameWidth), nameWidth) + ' ', []]];
  line.push(['[', []], [bar.inside, []], [']', []], [bar.beyond, ['red', 'bold']], [' '.repeat(barWidth - bar.inside.length - bar.beyond.length), []]);
  cells.forEach(([text, styles], i) => line.push([' ', []], [pad(text, COLUMNS[i][1], 'right'), styles]));
  return line;
}

export interface BarCounts {
  active: number;
  /** Opening or closing: counted against the budget, not in use. */
  changing: number;
  idle: number;
  waiting: number;
  budget: number;
  /** The most this instance may hold now, when it shares the budget with others (coordination); null or absent: the budget. */
  ceiling?: number | null;
}

/**
 * A service's budget bar in `cells` characters (and two brackets): inside the brackets, the
 * budget (or the connections held, if more: a lowered budget), as in use
 * `#`, opening or closing `+`, idle `=`, free `.` and, when other instances
 * share the budget, the part of it this one may not use now `-`; past the bracket `>`,
 * the clients waiting beyond it. When clients wait, the bar scales so that
 * budget and waiters share its width in proportion, so a service far over
 * its budget shows a short bracket and a long tail.
 */
export function budgetBar(n: BarCounts, cells: number): { inside: string; beyond: string } {
  const held = n.active + n.changing + n.idle;
  const inside = Math.max(n.budget, held);
  const waiting = Math.max(0, n.waiting);
  const units = inside + waiting;
  if (units === 0 || cells <= 0) return { inside: '.'.repeat(Math.max(0, cells)), beyond: '' };
  const [insideCells, waitingCells] = waiting === 0 ? [cells, 0] : apportion([inside, waiting], cells);
  const usable = n.ceiling === null || n.ceiling === undefined ? inside : Math.max(held, Math.min(inside, n.ceiling));
  const parts = apportion([n.active, n.changing, n.idle, usable - held, inside - usable], insideCells);
  return {
    inside: '#'.repeat(parts[0]) + '+'.repeat(parts[1]) + '='.repeat(parts[2]) + '.'.repeat(parts[3]) + '-'.repeat(parts[4]),
    beyond: '>'.repeat(waitingCells),
  };
}

/**
 * `cells` split in proportion to `counts` (largest remainder), where every
 * count above zero gets at least one cell while cells last, the largest
 * counts first. The parts always add up to `cells`.
 */
export function apportion(counts: readonly number[], cells: number): number[] {
  const total = counts.reduce((a, b) => a + Math.max(0, b), 0);
  const parts = counts.map(() => 0);
  if (cells <= 0 || total <= 0) return parts;
  const exact = counts.map((c) => (Math.max(0, c) / total) * cells);
  exact.forEach((x, i) => (parts[i] = Math.floor(x)));
  let left = cells - parts.reduce((a, b) => a + b, 0);
  const byRemainder = exact.map((x, i) => i).sort((a, b) => exact[b] - parts[b] - (exact[a] - parts[a]) || a - b);
  for (const i of byRemainder) {
    if (left === 0) break;
    parts[i]++;
    left--;
  }
  // A count above zero shows, taking a cell from the largest part that can spare one.
  const bySize = counts.map((_, i) => i).sort((a, b) => counts[b] - counts[a] || a - b);
  for (const i of bySize) {
    if (counts[i] <= 0 || parts[i] > 0) continue;
    const donor = bySize.find((j) => parts[j] > 1);
    if (donor === undefined) break;
    parts[donor]--;
    parts[i]++;
  }
  return parts;
}

function upstreamLine(u: ProxySnapshot['upstream']): Line {
  const line: Line = [
    ['upstream  ', ['bold']],
    [`${u.host}:${u.port}  server connections ${u.serverConnections} / cap ${u.maxConnections}`, u.serverConnections >= u.maxConnections ? ['bold'] : []],
  ];
  if (u.lastError === null) line.push(['  up', []]);
  else line.push(['  DOWN: ', ['red', 'bold']], [oneLine(u.lastError), ['red']]);
  return line;
}

type Cluster = NonNullable<ProxySnapshot['coordination']>;

/** The cluster this instance shares budgets with (coordination): reachable or not, how many instances, the cap across them. */
function clusterLine(c: Cluster): Line {
  const peers = new Set(c.services.flatMap((s) => s.peers.map((p) => p.instance)));
  const line: Line = [['cluster   ', ['bold']], [`${c.cluster}  ${peers.size + 1} instance${peers.size === 0 ? '' : 's'}`, []]];
  line.push([`  leases ${c.cap.clusterLeases} / cap ${c.cap.cap}`, c.cap.clusterLeases >= c.cap.cap ? ['bold'] : []]);
  if (c.up) line.push(['  up', []]);
  else line.push([`  REDIS DOWN ${fmtNumber(c.downForSeconds)}s (${c.onRedisDown})`, ['red', 'bold']]);
  return line;
}

/** Per shared service: the cluster's leases against the cluster budget, this instance's share and ceiling, and who waits elsewhere. */
function clusterServiceLines(c: Cluster, nameWidth: number): Line[] {
  const rows: Line[] = [[['CLUSTER', ['bold']]]];
  for (const s of c.services) {
    const waiting = s.peers.reduce((n, p) => n + p.waiting, 0);
    const oldest = s.peers.reduce((n, p) => Math.max(n, p.oldestWaitMs), 0);
    rows.push([
      [pad(ellipsize(s.name, nameWidth), nameWidth) + ' ', []],
      [`${s.clusterLeases}/${s.clusterBudget} in the cluster`, s.clusterLeases >= s.clusterBudget ? ['bold'] : []],
      [`, ${s.leases} here${s.ceiling === null ? '' : ` (may hold ${s.ceiling})`}`, []],
      [waiting > 0 ? `, ${waiting} waiting elsewhere (oldest ${fmtWait({ seconds: oldest / 1000, beyond: false })})` : '', waiting > 0 ? ['yellow'] : []],
    ]);
  }
  return rows.length > 1 ? rows : [];
}

function databaseLine(d: ProxySnapshot['database']): Line {
  const head: [string, Style[]] = ['database  ', ['bold']];
  if (d === null) return [head, ['- (no headroom readings: headroom.user is not set)', ['dim']]];
  const line: Line = [head];
  const r = d.reading;
  if (r === null) line.push(['no reading yet', ['dim']]);
  else {
    const reserved = r.superuserReservedConnections + r.reservedConnections;
    const room = Math.max(0, r.maxConnections - reserved - r.otherConnections);
    line.push([`max_connections ${r.maxConnections}, ${reserved} reserved, ${r.otherConnections} others: room for ${room}`, []]);
    line.push([`  read ${fmtNumber(r.ageSeconds)}s ago${d.autoCap ? ', cap auto' : ''}`, ['dim']]);
  }
  if (d.lastError !== null) line.push(['  reading failed: ', ['red', 'bold']], [oneLine(d.lastError), ['red']]);
  return line;
}

/** A queue-wait quantile in at most 6 characters: 0ms, <1ms, 420ms, 1.25s, 12.5s, >60s. */
export function fmtWait(q: WaitQuantile | null): string {
  if (q === null || !Number.isFinite(q.seconds)) return '-';
  const s = q.seconds;
  let text: string;
  if (s <= 0) text = '0ms';
  else if (s < 0.001) text = '<1ms';
  else if (s < 0.9995) text = `${Math.round(s * 1000)}ms`;
  else if (s < 9.995) text = `${s.toFixed(2)}s`;
  else if (s < 99.95) text = `${s.toFixed(1)}s`;
  else text = `${Math.round(s)}s`;
  return q.beyond ? `>${text}` : text;
}

/** A rate per second in at most 6 characters: 0, 0.5, 12, 340, 1.2k. */
export function fmtRate(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return '-';
  if (x === 0) return '0';
  if (x < 9.95) return x.toFixed(1);
  if (x < 999.5) return String(Math.round(x));
  if (x < 99_950) return `${(x / 1000).toFixed(1)}k`;
  return `${Math.round(x / 1000)}k`;
}

function fmtNumber(x: number): string {
  return x < 10 && !Number.isInteger(x) ? x.toFixed(1) : String(Math.round(x));
}

function clock(d: Date): string {
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/** An error said in full: words wrapped at `width`, the lines after the first indented, at most 4 lines. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of oneLine(text).split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = '  ' + word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  lines.push(line);
  return lines.slice(0, 4);
}

function ellipsize(text: string, width: number): string {
  return text.length <= width ? text : text.slice(0, width - 1) + '~';
}

function pad(text: string, width: number, align: 'left' | 'right' = 'left'): string {
  return align === 'left' ? text.padEnd(width) : text.padStart(width);
}

/** Left pieces, then right pieces flush with the right edge (or after one space, if the line is full). */
function spread(left: Line, right: Line, width: number): Line {
  const used = [...left, ...right].reduce((n, [t]) => n + t.length, 0);
  return [...left, [' '.repeat(Math.max(1, width - used)), []], ...right];
}

/** The line cut to `width` characters (trailing blanks dropped), then painted. */
function fit(line: Line, width: number, paint: Paint): string {
  let left = width;
  let out = '';
  const pieces: [string, Style[]][] = [];
  for (const [text, styles] of line) {
    const cut = text.length > left ? text.slice(0, left) : text;
    left -= cut.length;
    pieces.push([cut, styles]);
  }
  // Trailing blanks say nothing and would wrap a terminal exactly as wide.
  for (let i = pieces.length - 1; i >= 0; i--) {
    const trimmed = pieces[i][0].replace(/ +$/, '');
    pieces[i][0] = trimmed;
    if (trimmed !== '') break;
  }
  for (const [text, styles] of pieces) out += paint(text, ...styles);
  return out;
}
