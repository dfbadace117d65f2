// Short conversations with the postmaster that take no backend slot: a
// CancelRequest for a running statement, and the probe that tells whether
// the upstream answers at all.
import net from 'node:net';
import { cancelRequest } from '../protocol/encode.js';

/** What sendCancel reports; each is called at most once, and none throws into it. */
export interface CancelHooks {
  /** Connected: whether the cancel is still wanted (if not, nothing is sent). */
  stillWanted(): boolean;
  /** The request is on its way; `settled` follows. */
  sending(): void;
  /** The postmaster closed the connection (clean), or it failed or timed out after sending. */
  settled(clean: boolean): void;
  /** The cancel connection is gone, whether or not anything was sent. */
  closed(): void;
  failed(message: string): void;
}

/** Sends a CancelRequest for (processId, secretKey); bounded by `timeoutMs`. */
export function sendCancel(host: string, port: number, processId: number, secretKey: number, hooks: CancelHooks, timeoutMs = 5000): void {
  let sent = false;
  let settled = false;
  const settle = (clean: boolean) => {
    if (!sent || settled) return;
    settled = true;
    hooks.settled(clean);
  };
  const s = net.connect({ host, port }, () => {
    if (!hooks.stillWanted()) return s.destroy();
    sent = true;
    hooks.sending();
    s.end(cancelRequest(processId, secretKey));
  });
  s.on('error', (err) => hooks.failed(err.message));
  s.on('close', (hadError) => {
    settle(!hadError);
    hooks.closed();
  });
  s.setTimeout(timeoutMs, () => {
    settle(false);
    s.destroy();
  });
}

/** Whether the postmaster answers: an SSLRequest, answered by the postmaster itself ('S' or 'N'). */
export function probePostmaster(host: string, port: number, timeoutMs = 2000): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47])));
    s.on('data', (d) => done(d[0] === 0x4e || d[0] === 0x53));
  });
}
