// What the server pool and coordination (budgets shared by several pgbudget
// instances through Redis) exchange. Imports nothing.

/**
 * Where a server connection asks leave to open when budgets are shared with
 * other instances: resolves true when it may, false when the cluster has no
 * room. `released` runs once its socket has closed.
 */
export interface LeaseGate {
  acquire(service: string, connId: number, shared: boolean, budget: number): Promise<boolean>;
  released(connId: number): void;
  /** The backend pids of the other instances' server connections, as last published (for headroom readings: not "other" connections). */
  peerPids(): readonly number[];
}

/** A service's use of server connections in this instance. */
export interface ServiceUse {
  name: string;
  budget: number;
  /** Its budget is shared by the cluster: enforced, and not one of pgbudget's own per-instance services (counted against the cap only). */
  shared: boolean;
  held: number;
  closing: number;
  waiting: number;
  oldestWaitMs: number;
}
