// The scheduler's actions, sorted by kind, for the tests that drive it
// without sockets (scheduler.test, dryRun.test).
import type { Action, Scheduler } from '../../src/budget/scheduler.js';

export const kinds = (actions: Action[]) => actions.map((a) => a.kind);
export const opens = (actions: Action[]) => actions.filter((a): a is Extract<Action, { kind: 'open' }> => a.kind === 'open');
export const assigns = (actions: Action[]) => actions.filter((a): a is Extract<Action, { kind: 'assign' }> => a.kind === 'assign');
export const closes = (actions: Action[]) => actions.filter((a): a is Extract<Action, { kind: 'close' }> => a.kind === 'close');

/** Opens every requested connection and returns the assignments that follow. */
export function openAll(s: Scheduler, actions: Action[], now = 0): Action[] {
  const out: Action[] = [];
  for (const o of opens(actions)) out.push(...s.opened(o.connId, now));
  return out;
}
