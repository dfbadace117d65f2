/** A whole protocol message: type byte, int32 length (excluding the type byte), body. */
export function msg(type: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  const out = Buffer.alloc(5 + b.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

/** A v3.0 StartupMessage with these parameters. */
export function startupPacket(params: Record<string, string>): Buffer {
  const body = Buffer.from(
    '\0\x03\0\0' + Object.entries(params).map(([k, v]) => `${k}\0${v}\0`).join('') + '\0',
    'utf8',
  );
  const out = Buffer.alloc(4 + body.length);
  out.writeInt32BE(out.length, 0);
  body.copy(out, 4);
  return out;
}
