// The waiter queue's old name: waiters and server connections now share one
// intrusive list (lists.ts), and the queue's unit test still imports it
// from here.
export { List as WaiterQueue, type Linked } from './lists.js';
