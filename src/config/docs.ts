// The README's configuration table, rendered from the schema: one row per
// field with its default and meaning. test/unit/configDocs.test.ts checks
// README.md against it; `npm run config-table` prints it.
import { ConfigSchema } from './schema.js';

interface Node {
  type?: string;
  properties?: Record<string, Node>;
  required?: string[];
  items?: Node;
  anyOf?: Node[];
  enum?: string[];
  default?: unknown;
  docDefault?: string;
  description?: string;
}

export interface ConfigRow {
  field: string;
  default: string;
  meaning: string;
}

/**
 * Every leaf field, and every mapping or list that has a description of its
 * own, in declaration order: `upstream.port`, `services[]`, `services[].name`.
 */
export function configRows(): ConfigRow[] {
  const rows: ConfigRow[] = [];
  const visit = (mapping: Node, prefix: string): void => {
    for (const [key, node] of Object.entries(mapping.properties ?? {})) {
      const field = `${prefix}${key}${node.type === 'array' ? '[]' : ''}`;
      // A list's fields are its items'; a union's (admin: "host:port" or a mapping), its mapping's.
      const inner = node.type === 'array' ? node.items : (node.anyOf?.find((b) => b.properties) ?? node);
      if (node.description !== undefined || !inner?.properties) {
        rows.push({ field, default: defaultOf(node, mapping.required?.includes(key) ?? false), meaning: meaningOf(node) });
      }
      if (inner?.properties) visit(inner, `${field}.`);
    }
  };
  visit(ConfigSchema as Node, '');
  return rows;
}

export function configTable(): string {
  const lines = ['| field | default | meaning |', '|---|---|---|'];
  for (const r of configRows()) lines.push(`| \`${r.field}\` | ${r.default} | ${r.meaning} |`);
  return lines.join('\n');
}

function defaultOf(node: Node, required: boolean): string {
  if (node.default !== undefined) return `\`${typeof node.default === 'string' ? node.default : JSON.stringify(node.default)}\``;
  return node.docDefault ?? (required ? 'required' : 'none');
}

/** The description; for a choice, the values first. */
function meaningOf(node: Node): string {
  const parts: string[] = [];
  if (node.enum) {
    const values = node.enum.map((v) => `\`${v}\``);
    parts.push(`${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`);
  }
  if (node.description) parts.push(node.description.replace(/\|/g, '\\|'));
  return parts.join('; ');
}
