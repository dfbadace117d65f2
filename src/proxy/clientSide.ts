// The client's side of a session, as its server link and its cancels see it.
import type { Transport } from '../io/transport.js';
import type { ClientInbound } from '../client/inbound.js';
import type { ClientOutbound } from '../client/outbound.js';
import type { StatementLayer } from '../client/statementLayer.js';
import type { TransactionTracker } from '../client/transaction.js';

export interface ClientSide {
  readonly socket: Transport;
  readonly tx: TransactionTracker;
  readonly statementLayer: StatementLayer;
  readonly inbound: ClientInbound;
  readonly outbound: ClientOutbound;
}
