#!/usr/bin/env python3
"""Process ids through pgbudget in session mode, with psycopg2, as
test/integration/sessionPids.test.ts asks:

    python3 pids.py '{"host": "127.0.0.1", "port": 6432, "user": "app", "dbname": "postgres"}'

Two connections, A and B. Prints one JSON line with what libpq was given in
BackendKeyData (get_backend_pid()) against what the server says
(pg_backend_pid()) for each, and the pid of a notification B sends A, which
psycopg2 checks against nothing but which a client compares with B's pid.
Then A terminates B's backend with pg_terminate_backend(B's pid), and the
line says what B got.
"""
import json
import select
import sys
import time

import psycopg2
import psycopg2.extensions

params = json.loads(sys.argv[1])
a = psycopg2.connect(**params)
b = psycopg2.connect(**params)
for c in (a, b):
    c.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)

out = {}
for name, c in (("a", a), ("b", b)):
    with c.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        out[name] = {"keyData": c.get_backend_pid(), "server": cur.fetchone()[0]}

with a.cursor() as cur:
    cur.execute("listen pids_test")
with b.cursor() as cur:
    cur.execute("notify pids_test, 'hello'")
deadline = time.time() + 5
while not a.notifies and time.time() < deadline:
    select.select([a], [], [], 0.5)
    a.poll()
n = a.notifies.pop(0) if a.notifies else None
out["notify"] = None if n is None else {"pid": n.pid, "channel": n.channel, "payload": n.payload}

with a.cursor() as cur:
    cur.execute("select pg_terminate_backend(%s)", (b.get_backend_pid(),))
    out["terminated"] = cur.fetchone()[0]
try:
    with b.cursor() as cur:
        cur.execute("select 1")
    out["b_after"] = "still works"
except psycopg2.Error as e:
    out["b_after"] = {"code": e.pgcode, "error": str(e).strip()}
print(json.dumps(out))
