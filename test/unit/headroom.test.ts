// The auto cap as a function of one reading, and the reading as a function
// of the statement's row: no sockets (the real database is in
// test/integration/headroom.test.ts).
import t from 'tap';
import { AUTO_CAP_FLOOR, capOf, freeConnections, type DatabaseReading } from '../../src/budget/headroom.js';
import { parseReading } from '../../src/server/headroom.js';

const reading = (other: number, reserved = 0): DatabaseReading => ({
  maxConnections: 100,
  superuserReservedConnections: 3,
  reservedConnections: reserved,
  otherConnections: other,
});
const auto = { maxConnections: 'auto' as const, autoMargin: 5, autoInitial: 10 };

t.test('free: max_connections less both reserved kinds and the others', async (t) => {
  t.equal(freeConnections(reading(0)), 97);
  t.equal(freeConnections(reading(20, 2)), 75);
  t.equal(freeConnections(reading(120)), -23, 'more others than slots: below zero, not clipped here');
});

t.test('a fixed cap ignores the readings', async (t) => {
  t.equal(capOf({ ...auto, maxConnections: 40 }, null), 40);
  t.equal(capOf({ ...auto, maxConnections: 40 }, reading(95)), 40);
});

t.test('auto: free less the margin, under the ceiling, never below the floor', async (t) => {
  t.equal(capOf(auto, reading(0)), 92);
  t.equal(capOf(auto, reading(20, 2)), 70, 'reserved_connections (PostgreSQL 16) counts as taken');
  t.equal(capOf({ ...auto, autoMargin: 0 }, reading(7)), 90);
  t.equal(capOf({ ...auto, autoCeiling: 30 }, reading(0)), 30, 'the ceiling holds when much is free');
  t.equal(capOf({ ...auto, autoCeiling: 30 }, reading(80)), 12, 'below the ceiling it follows the database');
  t.equal(capOf(auto, reading(92)), AUTO_CAP_FLOOR, 'nothing free beyond the margin: the floor');
  t.equal(capOf(auto, reading(150)), AUTO_CAP_FLOOR, 'more others than slots: the floor');
  t.equal(AUTO_CAP_FLOOR, 1, 'one connection, for the reading itself');
});

t.test('auto before any reading: autoInitial, under the ceiling', async (t) => {
  t.equal(capOf(auto, null), 10);
  t.equal(capOf({ ...auto, autoCeiling: 4 }, null), 4);
});

t.test('every connection of others lowers the cap by one, down to the floor', async (t) => {
  const caps = Array.from({ length: 94 }, (_, other) => capOf(auto, reading(other)));
  t.same(caps, [...Array.from({ length: 92 }, (_, i) => 92 - i), 1, 1]);
});

t.test('the reading: settings, and the other pids less those known to be ours', async (t) => {
  const ours = new Set([11, 12]);
  t.same(parseReading([['20', '3', '0', '{10,11,12,13}']], ours), {
    maxConnections: 20,
    superuserReservedConnections: 3,
    reservedConnections: 0,
    otherConnections: 2,
  });
  t.equal(parseReading([['20', '3', '2', null]], ours).otherConnections, 0, 'array_agg of no rows is NULL');
  t.equal(parseReading([['20', '3', '2', '{}']], ours).otherConnections, 0);
  t.equal(parseReading([['20', '3', '2', '{12}']], ours).reservedConnections, 2);
  t.throws(() => parseReading([], ours), /expected one row of 4 columns, got 0 rows/);
  t.throws(() => parseReading([['20', '3', '0']], ours), /expected one row of 4 columns/);
  t.throws(() => parseReading([['20', null, '0', null]], ours), /superuser_reserved_connections is null/);
  t.throws(() => parseReading([['many', '3', '0', null]], ours), /max_connections is "many"/);
});
