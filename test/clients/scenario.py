#!/usr/bin/env python3
"""Scenario for psycopg2: what a transaction-pooling proxy must survive.

Run by test/helpers/foreign-clients.ts:

    python3 scenario.py host port user database clientId [iterations]

Prints `SCENARIO OK <clientId>` as its last line on success; on failure it
prints the reason to stderr and exits non-zero. Every name it uses is suffixed
with / keyed by clientId, so many copies can run concurrently against one
database.
"""
import io
import select
import sys
import threading
import time
import traceback

import psycopg2
import psycopg2.extensions


class ScenarioFailure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise ScenarioFailure(message)


def describe(err):
    if isinstance(err, psycopg2.Error) and err.pgcode:
        return "SQLSTATE %s: %s" % (err.pgcode, str(err).strip())
    return "%s: %s" % (type(err).__name__, str(err).strip())


class Scenario:
    def __init__(self, host, port, user, database, client_id, iterations):
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.id = client_id
        self.iterations = iterations
        self.conn = None
        self.expected = 0  # rows this client currently has in scen_items
        self.step = "connect"

    # helpers -----------------------------------------------------------
    def count_own(self):
        with self.conn.cursor() as cur:
            cur.execute("select count(*) from scen_items where client = %s", (self.id,))
            return cur.fetchone()[0]

    def timed(self, name, fn):
        self.step = name
        t0 = time.monotonic()
        fn()
        print("step %s ok (%d ms)" % (name, (time.monotonic() - t0) * 1000), flush=True)

    def run(self):
        t0 = time.monotonic()
        self.conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.database,
            application_name="scen-psycopg2-%d" % self.id,
            connect_timeout=10,
        )
        self.conn.autocommit = True
        print("step connect ok (%d ms)" % ((time.monotonic() - t0) * 1000), flush=True)
        self.timed("setup", self.setup)
        self.timed("parameterized", self.parameterized)
        self.timed("error-in-transaction", self.error_in_transaction)
        self.timed("copy", self.copy)
        self.timed("cancel", self.cancel)
        self.timed("session-state", self.session_state)
        self.timed("cleanup", self.cleanup)
        print("step total ok (%d ms)" % ((time.monotonic() - t0) * 1000), flush=True)

    # 1. ----------------------------------------------------------------
    def setup(self):
        with self.conn.cursor() as cur:
            try:
                cur.execute("create table if not exists scen_items(client int, n int, note text)")
            except psycopg2.Error as e:
                # concurrent "create table if not exists" race
                if e.pgcode not in ("23505", "42P07"):
                    raise
            cur.execute("delete from scen_items where client = %s", (self.id,))
        self.expected = 0
        check(self.count_own() == 0, "own rows still present after delete")

    # 2. ----------------------------------------------------------------
    def parameterized(self):
        # psycopg2 has no protocol-level prepare: parameterized execute in a
        # loop, each statement its own (autocommit) transaction
        with self.conn.cursor() as cur:
            for i in range(1, self.iterations + 1):
                cur.execute(
                    "insert into scen_items values (%s, %s, %s)",
                    (self.id, i, "param-%d-%d" % (self.id, i)),
                )
                check(cur.rowcount == 1, "insert #%d affected %d rows" % (i, cur.rowcount))
                self.expected += 1
                if i % 3 == 0 or i == self.iterations:
                    cur.execute("select count(*) from scen_items where client = %s", (self.id,))
                    got = cur.fetchone()[0]
                    check(
                        got == self.expected,
                        "count after %d inserts: got %d, expected %d" % (i, got, self.expected),
                    )

    # 3. ----------------------------------------------------------------
    def error_in_transaction(self):
        conn = self.conn
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                cur.execute("insert into scen_items values (%s, %s, %s)", (self.id, -1, "doomed-%d" % self.id))
                try:
                    cur.execute("select 1/0")
                    raise ScenarioFailure("select 1/0 did not fail")
                except psycopg2.Error as e:
                    check(e.pgcode == "22012", "select 1/0: expected SQLSTATE 22012, got " + describe(e))
                conn.rollback()
                check(self.count_own() == self.expected, "row inserted before the error survived the rollback")
                conn.rollback()  # count_own opened a transaction
                cur.execute(
                    "insert into scen_items values (%s, %s, %s)", (self.id, -2, "after-error-%d" % self.id)
                )
                check(cur.rowcount == 1, "insert after rollback failed")
                conn.commit()
                self.expected += 1
        finally:
            if conn.status != psycopg2.extensions.STATUS_READY:
                conn.rollback()
            conn.autocommit = True
        got = self.count_own()
        check(got == self.expected, "after error + new transaction: got %d rows, expected %d" % (got, self.expected))
        with conn.cursor() as cur:
            cur.execute("select count(*) from scen_items where client = %s and n = -1", (self.id,))
            check(cur.fetchone()[0] == 0, "rolled-back row is visible")
            cur.execute("select count(*) from scen_items where client = %s and n = -2", (self.id,))
            check(cur.fetchone()[0] == 1, "committed row after the error is missing")

    # 4. ----------------------------------------------------------------
    def copy(self):
        rows = 1000
        data = "".join("%d\t%d\tcopy-%d-%d\n" % (self.id, 100000 + i, self.id, i) for i in range(rows))
        with self.conn.cursor() as cur:
            cur.copy_expert("COPY scen_items FROM STDIN", io.StringIO(data))
            check(cur.rowcount == rows, "COPY FROM STDIN reported %d rows, expected %d" % (cur.rowcount, rows))
            self.expected += rows
            got = self.count_own()
            check(got == self.expected, "after COPY IN: got %d rows, expected %d" % (got, self.expected))

            out = io.StringIO()
            cur.copy_expert(
                "COPY (select n from scen_items where client = %d order by n) TO STDOUT" % self.id, out
            )
            text = out.getvalue()
            lines = text.count("\n")
            check(lines == self.expected, "COPY TO STDOUT produced %d lines, expected %d" % (lines, self.expected))
            check(text.endswith("100999\n"), "COPY TO STDOUT: unexpected last row")

    # 5. ----------------------------------------------------------------
    def cancel(self):
        cancel_errors = []

        def canceller():
            try:
                self.conn.cancel()
            except Exception as e:  # noqa: BLE001
                cancel_errors.append(e)

        timer = threading.Timer(0.3, canceller)
        timer.daemon = True
        t0 = time.monotonic()
        timer.start()
        try:
            with self.conn.cursor() as cur:
                try:
                    cur.execute("select pg_sleep(30)")
                    raise ScenarioFailure("pg_sleep(30) was not cancelled")
                except psycopg2.Error as e:
                    check(e.pgcode == "57014", "pg_sleep: expected SQLSTATE 57014, got " + describe(e))
        finally:
            timer.cancel()
            timer.join()
        ms = (time.monotonic() - t0) * 1000
        check(not cancel_errors, "conn.cancel() failed: %s" % (cancel_errors and describe(cancel_errors[0])))
        check(ms < 10000, "cancel took %d ms" % ms)
        print("cancelled after %d ms" % ms, flush=True)
        with self.conn.cursor() as cur:
            cur.execute("select 1")
            check(cur.fetchone()[0] == 1, "select 1 after cancel returned the wrong result")

    # 6. ----------------------------------------------------------------
    def session_state(self):
        conn = self.conn
        channel = "scen_ch_%d" % self.id
        payload = "hello-%d" % self.id
        with conn.cursor() as cur:
            # LISTEN / NOTIFY on the same connection, outside a transaction
            cur.execute("LISTEN " + channel)
            cur.execute("NOTIFY " + channel + ", %s", (payload,))
            deadline = time.monotonic() + 5.0
            found = False
            seen = []
            while True:
                conn.poll()
                while conn.notifies:
                    n = conn.notifies.pop(0)
                    seen.append((n.channel, n.payload))
                    if n.channel == channel and n.payload == payload:
                        found = True
                if found:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                select.select([conn], [], [], remaining)
            check(found, "notification with payload %r not received within 5 s (got %r)" % (payload, seen))
            cur.execute("UNLISTEN " + channel)

            app = "scen-%d" % self.id
            cur.execute("SET application_name = %s", (app,))
            cur.execute("SHOW application_name")
            got = cur.fetchone()[0]
            check(got == app, "SHOW application_name: got %r, expected %r" % (got, app))

            # SQL-level prepared statement, executed twice
            name = "scen_ins_%d" % self.id
            cur.execute("PREPARE " + name + "(int, int, text) AS insert into scen_items values ($1, $2, $3)")
            for k in (1, 2):
                cur.execute("EXECUTE " + name + "(%s, %s, %s)", (self.id, -10 - k, "sqlprep-%d-%d" % (self.id, k)))
                check(cur.rowcount == 1, "EXECUTE %s #%d affected %d rows" % (name, k, cur.rowcount))
                self.expected += 1
            cur.execute("DEALLOCATE " + name)
        got = self.count_own()
        check(got == self.expected, "after EXECUTE: got %d rows, expected %d" % (got, self.expected))

    # 7. ----------------------------------------------------------------
    def cleanup(self):
        with self.conn.cursor() as cur:
            cur.execute("delete from scen_items where client = %s", (self.id,))
            check(
                cur.rowcount == self.expected,
                "cleanup deleted %d rows, expected %d" % (cur.rowcount, self.expected),
            )
        self.expected = 0
        check(self.count_own() == 0, "own rows still present after cleanup")
        self.conn.close()


def main(argv):
    if len(argv) < 6:
        print("usage: scenario.py host port user database clientId [iterations]", file=sys.stderr)
        return 2
    try:
        port = int(argv[2])
        client_id = int(argv[5])
        iterations = int(argv[6]) if len(argv) > 6 else 20
    except ValueError as e:
        print("bad argument: %s" % e, file=sys.stderr)
        return 2
    s = Scenario(argv[1], port, argv[3], argv[4], client_id, iterations)
    try:
        s.run()
    except BaseException as e:  # noqa: BLE001
        print("SCENARIO FAILED %d in step '%s': %s" % (client_id, s.step, describe(e)), file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return 1
    print("SCENARIO OK %d" % client_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
