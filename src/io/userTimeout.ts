// TCP_USER_TIMEOUT (Linux): how long bytes sent may stay unacknowledged
// before the kernel drops the connection. Keepalive alone does not cover a
// peer that vanished while bytes to it were in flight (a reply it had not
// acknowledged yet, a notification sent after it went): the kernel then
// retransmits, for tcp_retries2 (about 15 minutes), and never probes; the
// budget slot would wait that long. Node has no setter for it: ffi-rs (a
// maintained FFI with prebuilt binaries) calls setsockopt. Without it (no
// binary for the platform, not Linux), sockets keep the kernel's default,
// and probeUserTimeout() says why.
import { createRequire } from 'node:module';
import os from 'node:os';

const IPPROTO_TCP = 6;
const TCP_USER_TIMEOUT = 18;

/** The parts of ffi-rs used here. */
interface Ffi {
  open(o: { library: string; path: string }): void;
  load(o: { library: string; funcName: string; retType: unknown; paramsType: unknown[]; paramsValue: unknown[] }): unknown;
  createPointer(o: { paramsType: unknown[]; paramsValue: unknown[] }): unknown[];
  restorePointer(o: { retType: unknown[]; paramsValue: unknown[] }): unknown[];
  DataType: { I32: unknown; External: unknown };
}

const LIBRARY = 'pgbudget-libc';
let ffi: Ffi | null = null;
/** Why the option cannot be set here; undefined until the first attempt. */
let unavailable: string | null | undefined;
/** setsockopt's value argument, one per timeout (there are one or two in a process). */
const values = new Map<number, unknown>();

function load(): Ffi | null {
  if (unavailable !== undefined) return ffi;
  try {
    if (os.platform() !== 'linux') throw new Error(`TCP_USER_TIMEOUT is Linux's; this is ${os.platform()}`);
    const loaded = createRequire(import.meta.url)('ffi-rs') as Ffi;
    loaded.open({ library: LIBRARY, path: '' }); // '' is the process itself: libc's setsockopt
    ffi = loaded;
    unavailable = null;
  } catch (err) {
    unavailable = (err as Error).message.split('\n')[0];
  }
  return ffi;
}

/** Null when TCP_USER_TIMEOUT can be set here, else why not (logged once at startup). */
export function probeUserTimeout(): string | null {
  load();
  return unavailable ?? null;
}

/**
 * Sets TCP_USER_TIMEOUT on the socket `fd` (ms; 0 restores the kernel's
 * default). False when it cannot be set (see probeUserTimeout), or the
 * socket has no fd yet; never throws: it runs on every accept.
 */
export function setUserTimeout(fd: number | undefined, ms: number): boolean {
  const f = load();
  if (f === null || fd === undefined || fd < 0) return false;
  try {
    let value = values.get(ms);
    if (value === undefined) values.set(ms, (value = f.createPointer({ paramsType: [f.DataType.I32], paramsValue: [ms] })[0]));
    const ret = f.load({
      library: LIBRARY,
      funcName: 'setsockopt',
      retType: f.DataType.I32,
      paramsType: [f.DataType.I32, f.DataType.I32, f.DataType.I32, f.DataType.External, f.DataType.I32],
      paramsValue: [fd, IPPROTO_TCP, TCP_USER_TIMEOUT, value, 4],
    });
    return ret === 0;
  } catch {
    return false;
  }
}

/** The socket's TCP_USER_TIMEOUT (ms), or null when it cannot be read; for the tests, which read it back from the kernel. */
export function getUserTimeout(fd: number | undefined): number | null {
  const f = load();
  if (f === null || fd === undefined || fd < 0) return null;
  try {
    const [value] = f.createPointer({ paramsType: [f.DataType.I32], paramsValue: [0] });
    const [length] = f.createPointer({ paramsType: [f.DataType.I32], paramsValue: [4] });
    const ret = f.load({
      library: LIBRARY,
      funcName: 'getsockopt',
      retType: f.DataType.I32,
      paramsType: [f.DataType.I32, f.DataType.I32, f.DataType.I32, f.DataType.External, f.DataType.External],
      paramsValue: [fd, IPPROTO_TCP, TCP_USER_TIMEOUT, value, length],
    });
    if (ret !== 0) return null;
    return f.restorePointer({ retType: [f.DataType.I32], paramsValue: [value] })[0] as number;
  } catch {
    return null;
  }
}

/** The fd of a net.Socket's or a raw TCP handle's (undefined before it has one). */
export function fdOf(handleOrSocket: unknown): number | undefined {
  const o = handleOrSocket as { fd?: number; _handle?: { fd?: number } | null } | null;
  if (o === null || o === undefined) return undefined;
  return typeof o.fd === 'number' ? o.fd : (o._handle?.fd ?? undefined);
}

/** The TCP_USER_TIMEOUT sockets get: as configured, else keepalive's own bound (its idle time and 10 probes 1 s apart). */
export function userTimeoutMs(config: { tcpKeepaliveMs: number; tcpUserTimeoutMs?: number }): number {
  if (config.tcpUserTimeoutMs !== undefined) return config.tcpUserTimeoutMs;
  return config.tcpKeepaliveMs > 0 ? config.tcpKeepaliveMs + 10_000 : 0;
}
