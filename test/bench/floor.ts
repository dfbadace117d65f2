// The Node.js floor for the benchmark: a forwarder with no logic at all.
// Each client gets its own PostgreSQL connection (no pool, no budget, no
// framing, no statement handling) and bytes go both ways through the same
// raw-handle reads and writes pgbudget uses (src/io). Whatever separates it
// from PgBouncer is the cost of Node.js itself per event; whatever separates
// pgbudget from it is pgbudget's own work.
//
//   node build/test/bench/floor.js <listen port> <postgres port>
import net from 'node:net';
import { binding, copyOut, readBytes, writeTo, type AsyncWriter, type TcpHandle } from '../../src/io/handles.js';
import { READ_BUFFER } from '../../src/io/reads.js';
import { acceptRaw } from '../../src/io/accept.js';

const [listenPort, upstreamPort] = process.argv.slice(2).map(Number);
if (!binding) throw new Error('this Node.js has no stream_wrap binding: no floor to measure');
const b = binding;

// pgbench's messages are small: a write that goes asynchronous is rare, and
// its completion needs no action here beyond keeping the buffer alive (writeTo does).
const ignoreWrites: AsyncWriter = { afterWrite() {} };

function forward(client: TcpHandle): void {
  client.setNoDelay(true);
  const server = net.connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true });
  let serverHandle: TcpHandle | null = null;
  const early: Buffer[] = [];
  const closeClient = () => client.close(() => {});
  client.useUserBuffer(READ_BUFFER);
  client.onread = () => {
    const n = readBytes();
    if (n <= 0) {
      closeClient();
      server.destroy();
      return;
    }
    const chunk = copyOut(READ_BUFFER, n);
    if (serverHandle) writeTo(b, serverHandle, chunk, ignoreWrites);
    else early.push(chunk);
  };
  client.readStart();
  server.on('connect', () => {
    const h = (server as unknown as { _handle: TcpHandle })._handle;
    h.useUserBuffer(READ_BUFFER);
    const viaNet = h.onread;
    h.onread = function (this: TcpHandle, arrayBuffer) {
      const n = readBytes();
      if (n <= 0) return viaNet.call(this, arrayBuffer);
      writeTo(b, client, copyOut(READ_BUFFER, n), ignoreWrites);
    };
    serverHandle = h;
    for (const chunk of early) writeTo(b, h, chunk, ignoreWrites);
    early.length = 0;
  });
  server.on('error', closeClient);
  server.on('close', closeClient);
}

const listener = net.createServer();
listener.listen(listenPort, '127.0.0.1', () => {
  acceptRaw(
    listener,
    (accepted) => {
      if ('handle' in accepted) forward(accepted.handle as TcpHandle);
      else accepted.socket.destroy();
    },
    (err) => process.stderr.write(`floor: ${err.message}\n`),
  );
});
