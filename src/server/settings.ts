// Startup parameters applied per checkout: the settings a client asked for in
// its startup packet that PostgreSQL reports (or clients commonly set), which
// pgbudget applies on whichever server connection the client gets, instead of
// keeping a pool per combination of them. Pure: what to apply, as SQL.
//
// A server connection logs in without them (its "base": the server's
// defaults, client_encoding UTF8 and application_name pgbudget:<service>,
// as pgbudget's own login sets them). Each connection remembers the settings
// last applied to it; a client whose settings differ gets, in the same write
// as its first message, one simple query that resets what it did not ask for
// and sets what it did. The replies are cut before the client's own (the
// server connection's control conversation).

/** The parameters applied per checkout, as PostgreSQL spells them (startup names are matched without case). */
export const PER_CHECKOUT = ['application_name', 'client_encoding', 'DateStyle', 'IntervalStyle', 'TimeZone', 'standard_conforming_strings', 'search_path'] as const;

const CANONICAL = new Map<string, string>(PER_CHECKOUT.map((name) => [name.toLowerCase(), name]));

/** The canonical name when `name` (any case) is applied per checkout, else undefined. */
export function perCheckoutName(name: string): string | undefined {
  return CANONICAL.get(name.toLowerCase());
}

/**
 * What a connection has, or a client wants: a value for each parameter
 * named, the base for the others. `sig` is equal for equal settings, so a
 * checkout compares one string.
 */
export interface Settings {
  readonly values: ReadonlyMap<string, string>;
  readonly sig: string;
}

/** A connection as it logged in (and after DISCARD ALL): nothing applied. */
export const BASE: Settings = Object.freeze({ values: new Map(), sig: '' });

/**
 * A connection whose settings are not known (a client ran RESET or DISCARD
 * ALL on it): its sig matches nobody's, so the next checkout resets and sets
 * everything.
 */
export const UNKNOWN: Settings = Object.freeze({ values: new Map(), sig: '\u0000unknown' });

/** Settings from name/value pairs (names canonical). */
export function settingsOf(values: Map<string, string>): Settings {
  if (values.size === 0) return BASE;
  const names = [...values.keys()].sort();
  return { values, sig: names.map((n) => `${n}\u0001${values.get(n)}`).join('\u0000') };
}

/**
 * The settings a client's startup parameters ask for. `applicationName`:
 * the client's own application_name ('' when it sent none, as PostgreSQL
 * has then), or null to leave the connection's (serverApplicationName: service).
 */
export function clientSettings(params: Readonly<Record<string, string>>, applicationName: string | null): Settings {
  const values = new Map<string, string>();
  for (const key of Object.keys(params)) {
    const name = perCheckoutName(key);
    if (name !== undefined && name !== 'application_name') values.set(name, params[key]);
  }
  if (applicationName !== null) values.set('application_name', applicationName);
  return settingsOf(values);
}

/**
 * The simple query that takes a connection from `from` to `to`, or null when
 * they are the same: RESET for each parameter `to` leaves at its base, one
 * set_config() per value `to` sets (set_config takes the value as the
 * startup packet gives it, lists such as search_path included). Values go
 * in E'' literals, whose escapes do not depend on standard_conforming_strings.
 */
export function settingsSql(from: Settings, to: Settings): string | null {
  if (from.sig === to.sig) return null;
  const resets: string[] = [];
  const sets: string[] = [];
  const known = from !== UNKNOWN;
  if (!known) {
    // Anything may have been set: every parameter not asked for goes back to its base.
    for (const name of PER_CHECKOUT) if (!to.values.has(name)) resets.push(`RESET ${quoteIdent(name)}`);
  } else {
    for (const name of from.values.keys()) if (!to.values.has(name)) resets.push(`RESET ${quoteIdent(name)}`);
  }
  for (const [name, value] of to.values) {
    if (known && from.values.get(name) === value) continue;
    sets.push(`set_config(${literal(name)}, ${textValue(value)}, false)`);
  }
  const parts = [...resets];
  if (sets.length > 0) parts.push(`SELECT ${sets.join(', ')}`);
  return parts.length === 0 ? null : parts.join('; ');
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * A value as SQL text. ASCII goes in an E'' literal. Anything else goes as
 * the hex of its UTF-8 bytes, decoded by the server: the query is then ASCII
 * whatever client_encoding the connection's previous client left on it, which
 * would otherwise decide how the server reads those bytes.
 */
export function textValue(value: string): string {
  if (/^[\x00-\x7f]*$/.test(value)) return literal(value);
  return `convert_from(decode('${Buffer.from(value, 'utf8').toString('hex')}', 'hex'), 'UTF8')`;
}

/** An E'' literal: backslash and quote escaped, whatever standard_conforming_strings is. */
export function literal(value: string): string {
  return `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/**
 * The welcome a client of these settings gets: the connection's reported
 * parameters (`base`, in order) with those the settings query reported
 * since (`reported`) in their place, and any new ones after.
 */
export function mergeReported(base: readonly [string, string][], reported: ReadonlyMap<string, string>): [string, string][] {
  if (reported.size === 0) return base as [string, string][];
  const out: [string, string][] = base.map(([n, v]) => [n, reported.get(n) ?? v]);
  for (const [n, v] of reported) if (!base.some(([b]) => b === n)) out.push([n, v]);
  return out;
}
