// The welcome a client gets after its startup packet: AuthenticationOk, the
// server's ParameterStatus messages, its own application_name, its
// BackendKeyData and ReadyForQuery, encoded with as little work per login as
// possible (a connection per request makes this the hot path of a login).
import { authenticationOk, BACKEND_KEY_DATA_BYTES, parameterStatus, readyForQuery, writeBackendKeyData } from '../protocol/encode.js';

const EMPTY = Buffer.alloc(0);
const READY_IDLE = readyForQuery('I');

/**
 * AuthenticationOk and the server's ParameterStatus messages, the part of a
 * welcome every client of a pool key shares (application_name is each
 * client's own): encoded once per key, not per login.
 */
const welcomeBlocks = new WeakMap<[string, string][], Buffer>();

function welcomeBlock(params: [string, string][]): Buffer {
  const parts = [authenticationOk()];
  for (const [name, value] of params) if (name !== 'application_name') parts.push(parameterStatus(name, value));
  return Buffer.concat(parts);
}

// The last welcome's shared part with its application_name: clients that
// connect again and again (a connection per request) send the same name, and
// encoding it anew was a third of the proxy's work in a login.
let lastWelcomeBlock: Buffer | null = null;
let lastApplicationName = '';
let lastWelcomeHead = EMPTY;

/** AuthenticationOk, the server's parameters, the client's application_name, BackendKeyData and ReadyForQuery, in one Buffer. */
export function welcome(params: [string, string][], applicationName: string, processId: number, secretKey: number): Buffer {
  let block = welcomeBlocks.get(params);
  if (!block) {
    block = welcomeBlock(params);
    welcomeBlocks.set(params, block);
  }
  if (block !== lastWelcomeBlock || applicationName !== lastApplicationName) {
    lastWelcomeBlock = block;
    lastApplicationName = applicationName;
    lastWelcomeHead = Buffer.concat([block, parameterStatus('application_name', applicationName)]);
  }
  const head = lastWelcomeHead;
  const out = Buffer.allocUnsafe(head.length + BACKEND_KEY_DATA_BYTES + READY_IDLE.length);
  head.copy(out, 0);
  writeBackendKeyData(out, head.length, processId, secretKey);
  READY_IDLE.copy(out, head.length + BACKEND_KEY_DATA_BYTES);
  return out;
}
