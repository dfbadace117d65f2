// The Prometheus text exposition format (version 0.0.4), read back: one
// sample per line, `name{label="value",…} value [timestamp]`. Comments
// (# HELP, # TYPE) say nothing `pgbudget top` needs and are skipped. A line
// that does not parse is counted and skipped: a decoder of another
// program's text returns what it could read instead of throwing.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** Lines that were neither blank, a comment nor a sample. */
  malformed: number;
}

const NAME = /[a-zA-Z_:][a-zA-Z0-9_:]*/y;
const LABEL_NAME = /[a-zA-Z_][a-zA-Z0-9_]*/y;
const BLANK = /[ \t]*/y;

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  let malformed = 0;
  for (const raw of text.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const start = skipBlank(line, 0);
    if (start === line.length || line[start] === '#') continue;
    const sample = parseSample(line, start);
    if (sample === null) malformed++;
    else samples.push(sample);
  }
  return { samples, malformed };
}

function skipBlank(line: string, at: number): number {
  BLANK.lastIndex = at;
  BLANK.test(line);
  return BLANK.lastIndex;
}

/** The token `re` (sticky) reads at `at`, or null. */
function token(re: RegExp, line: string, at: number): string | null {
  re.lastIndex = at;
  const m = re.exec(line);
  return m === null ? null : m[0];
}

function parseSample(line: string, at: number): Sample | null {
  const name = token(NAME, line, at);
  if (name === null) return null;
  let i = at + name.length;
  // No prototype: a label may be called __proto__.
  const labels: Record<string, string> = Object.create(null);
  if (line[i] === '{') {
    const end = parseLabels(line, i + 1, labels);
    if (end === null) return null;
    i = end;
  }
  // Blank, the value, then an optional timestamp (integer ms), then nothing.
  const fields = line.slice(i).split(/[ \t]+/);
  if (fields[0] !== '') return null;
  if (fields[fields.length - 1] === '') fields.pop();
  if (fields.length < 2 || fields.length > 3) return null;
  const value = parseValue(fields[1]);
  if (value === null) return null;
  if (fields.length === 3 && !/^-?[0-9]+$/.test(fields[2])) return null;
  return { name, labels, value };
}

/** Reads `label="value",…}` from `at` into `into`; the index after the `}`, or null. */
function parseLabels(line: string, at: number, into: Record<string, string>): number | null {
  let i = skipBlank(line, at);
  for (;;) {
    if (line[i] === '}') return i + 1;
    const label = token(LABEL_NAME, line, i);
    if (label === null) return null;
    i = skipBlank(line, i + label.length);
    if (line[i] !== '=') return null;
    i = skipBlank(line, i + 1);
    if (line[i] !== '"') return null;
    const value = readQuoted(line, i + 1);
    if (value === null) return null;
    if (Object.hasOwn(into, label)) return null;
    into[label] = value.text;
    i = skipBlank(line, value.end);
    if (line[i] === ',') i = skipBlank(line, i + 1);
    else if (line[i] !== '}') return null;
  }
}

/** A label value after its opening quote: `\\`, `\"` and `\n` are escapes. */
function readQuoted(line: string, at: number): { text: string; end: number } | null {
  let text = '';
  for (let i = at; i < line.length; i++) {
    const c = line[i];
    if (c === '"') return { text, end: i + 1 };
    if (c !== '\\') {
      text += c;
      continue;
    }
    const next = line[++i];
    if (next === 'n') text += '\n';
    else if (next === '\\' || next === '"') text += next;
    else return null;
  }
  return null;
}

/** A Go float as Prometheus writes it, `NaN`, `+Inf`, `-Inf` included. */
function parseValue(field: string): number | null {
  switch (field.toLowerCase()) {
    case 'nan':
      return NaN;
    case '+inf':
    case 'inf':
      return Infinity;
    case '-inf':
      return -Infinity;
  }
  if (!/^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/.test(field)) return null;
  return Number(field);
}

/** The samples of one scrape, by name. */
export class Samples {
  private readonly byName = new Map<string, Sample[]>();

  constructor(samples: readonly Sample[]) {
    for (const s of samples) {
      const list = this.byName.get(s.name);
      if (list) list.push(s);
      else this.byName.set(s.name, [s]);
    }
  }

  /** Every sample of `name` whose labels include `labels`. */
  all(name: string, labels: Record<string, string> = {}): Sample[] {
    const list = this.byName.get(name) ?? [];
    const keys = Object.keys(labels);
    return keys.length === 0 ? list : list.filter((s) => keys.every((k) => s.labels[k] === labels[k]));
  }

  /** The value of the one sample of `name` with `labels`; null when there is none. */
  value(name: string, labels: Record<string, string> = {}): number | null {
    const found = this.all(name, labels);
    return found.length === 0 ? null : found[0].value;
  }
}
