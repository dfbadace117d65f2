// The Prometheus text format as `pgbudget top` reads it: what a writer puts
// in (any name, any label value, NaN and infinities, timestamps, comments,
// blank runs) comes back out; nonsense is counted as malformed lines and
// never throws; and prom-client's own output, histogram and escapes
// included, reads as prom-client meant it.
import fc from 'fast-check';
import client from 'prom-client';
import t from 'tap';
import { parseExposition, Samples, type Sample } from '../../src/top/exposition.js';

const metricName = fc.stringMatching(/^[a-zA-Z_:][a-zA-Z0-9_:]{0,20}$/);
const labelName = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_]{0,10}$/);
const labelValue = fc.string({ unit: fc.oneof(fc.constantFrom('"', '\\', '\n', '{', '}', ',', '=', ' ', '#'), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 })), maxLength: 12 });
const value = fc.oneof(fc.double(), fc.integer().map(Number), fc.constantFrom(NaN, Infinity, -Infinity, 0, -0));

const sample: fc.Arbitrary<Sample> = fc.record({
  name: metricName,
  labels: fc.dictionary(labelName, labelValue, { maxKeys: 4 }).map((d) => ({ ...d })),
  value,
});

/** A value as Go's strconv writes it (what Prometheus clients print). */
function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');

/** How one sample may be written: blanks, a trailing comma, a timestamp, a CR before the newline. */
const layout = fc.record({
  blank: fc.constantFrom(' ', '\t', '  ', ' \t'),
  trailingComma: fc.boolean(),
  timestamp: fc.option(fc.bigInt({ min: -(2n ** 62n), max: 2n ** 62n }), { nil: undefined }),
  crlf: fc.boolean(),
  comment: fc.option(fc.constantFrom('# HELP x some help', '# TYPE x counter', '#', '   # indented'), { nil: undefined }),
  blankLines: fc.nat({ max: 2 }),
});

type LayoutValue = typeof layout extends fc.Arbitrary<infer V> ? V : never;

function write(s: Sample, l: LayoutValue): string {
  const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escape(v)}"`);
  const braces = labels.length === 0 && !l.trailingComma ? '' : `{${labels.join(',')}${l.trailingComma && labels.length > 0 ? ',' : ''}}`;
  const ts = l.timestamp === undefined ? '' : `${l.blank}${l.timestamp}`;
  const lines = [...(l.comment ? [l.comment] : []), ...Array(l.blankLines).fill(''), `${s.name}${braces}${l.blank}${formatValue(s.value)}${ts}`];
  return lines.map((x) => x + (l.crlf ? '\r' : '')).join('\n');
}

const same = (a: number, b: number) => Object.is(a, b) || (a === 0 && b === 0) || (Number.isNaN(a) && Number.isNaN(b));

t.test('every sample written comes back, labels, escapes, NaN and infinities included', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(sample, layout), { maxLength: 8 }), fc.boolean(), (written, finalNewline) => {
      const text = written.map(([s, l]) => write(s, l)).join('\n') + (finalNewline ? '\n' : '');
      const { samples, malformed } = parseExposition(text);
      if (malformed !== 0) return false;
      if (samples.length !== written.length) return false;
      return samples.every(
        (got, i) => got.name === written[i][0].name && same(got.value, written[i][0].value) && JSON.stringify(got.labels) === JSON.stringify(written[i][0].labels),
      );
    }),
    { numRuns: 2000 },
  );
});

t.test('any text: no exception, and every sample read has a valid name and a number', async (t) => {
  const pieces = fc.constantFrom('a', 'b_total', '{', '}', '"', '\\', ',', '=', ' ', '\t', '\n', '\r', '#', '1', '-', '+Inf', 'NaN', 'e', '.', 'le', 'x="y"');
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 200 }), fc.array(pieces, { maxLength: 60 }).map((p) => p.join(''))), (text) => {
      const { samples, malformed } = parseExposition(text);
      if (!Number.isInteger(malformed) || malformed < 0) return false;
      return samples.every((s) => /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(s.name) && typeof s.value === 'number');
    }),
    { numRuns: 5000 },
  );
});

t.test('a good line among bad ones is still read', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.string({ maxLength: 30 }).filter((s) => !s.includes('\n')), { maxLength: 5 }), fc.nat({ max: 5 }), (junk, at) => {
      const lines = junk.map((j) => `9${j}`); // a digit cannot start a sample
      lines.splice(Math.min(at, lines.length), 0, 'pgbudget_clients_waiting{service="a"} 7');
      const { samples, malformed } = parseExposition(lines.join('\n'));
      return samples.length === 1 && samples[0].value === 7 && malformed === junk.length;
    }),
  );
});

t.test('lines that are not samples', async (t) => {
  for (const line of [
    'name',
    'name{',
    'name{a="b"',
    'name{a="b"}',
    'name{a="b} 1',
    'name{a=b} 1',
    'name{a="b" c="d"} 1',
    'name{a="b",a="c"} 1',
    'name{a="\\x"} 1',
    'name{1a="b"} 1',
    'name 1 2 3',
    'name one',
    'name 1 1.5',
    'name1',
    '{a="b"} 1',
    '1name 1',
  ]) {
    t.same(parseExposition(line), { samples: [], malformed: 1 }, JSON.stringify(line));
  }
  t.same(parseExposition('\n  \n# TYPE x gauge\n\t# indented comment\n'), { samples: [], malformed: 0 }, 'blank lines and comments');
  t.same(parseExposition('x{} 1\ny{a="b",} 2 1700000000000\nz 3e-2\nw -Inf'), {
    samples: [
      { name: 'x', labels: {}, value: 1 },
      { name: 'y', labels: { a: 'b' }, value: 2 },
      { name: 'z', labels: {}, value: 0.03 },
      { name: 'w', labels: {}, value: -Infinity },
    ],
    malformed: 0,
  });
});

t.test("prom-client's output reads back: counters, labelled gauges, a histogram, escaped values", async (t) => {
  const registry = new client.Registry();
  const counter = new client.Counter({ name: 'pgbudget_rejections_total', help: 'h', labelNames: ['service', 'reason'], registers: [registry] });
  counter.inc({ service: 'we"ird\\name\nx', reason: 'queue_timeout' }, 3);
  counter.inc({ service: 'calm', reason: 'queue_full' }, 1);
  const gauge = new client.Gauge({ name: 'pgbudget_service_surge', help: 'h "quoted" \\ help', labelNames: ['service'], registers: [registry] });
  gauge.set({ service: 'storm' }, 1);
  const hist = new client.Histogram({ name: 'pgbudget_queue_wait_seconds', help: 'h', labelNames: ['service'], buckets: [0.001, 0.5, 60], registers: [registry] });
  for (const v of [0, 0.2, 0.3, 100]) hist.observe({ service: 'storm' }, v);
  const samples = new Samples(parseExposition(await registry.metrics()).samples);

  t.equal(samples.value('pgbudget_rejections_total', { service: 'we"ird\\name\nx', reason: 'queue_timeout' }), 3, 'escapes undone');
  t.equal(samples.value('pgbudget_rejections_total', { service: 'calm' }), 1);
  t.equal(samples.value('pgbudget_service_surge', { service: 'storm' }), 1);
  t.same(
    samples.all('pgbudget_queue_wait_seconds_bucket', { service: 'storm' }).map((s) => [s.labels.le, s.value]),
    [['0.001', 1], ['0.5', 3], ['60', 3], ['+Inf', 4]],
  );
  t.equal(samples.value('pgbudget_queue_wait_seconds_count', { service: 'storm' }), 4);
  t.equal(samples.value('pgbudget_queue_wait_seconds_sum', { service: 'storm' }), 100.5);
  t.equal(samples.value('pgbudget_client_connection_attempts_total', { service: 'storm' }), null, 'an absent metric is null');
});
