#!/usr/bin/env python3
"""Logging in with psycopg2, once per case, as test/integration/authClients.test.ts
asks through test/helpers/foreign-clients.ts:

    python3 auth_probe.py '[{"label": "scram.ok", "params": {"host": "127.0.0.1", ...}}, ...]'

The argument is a JSON list of cases: a label and the keyword arguments of
psycopg2.connect (libpq's connection parameters: host, port, user, password,
dbname, sslmode, sslrootcert, sslcert, sslkey, channel_binding, ...), written
in ASCII whatever the locale (JSON's \\u escapes for anything else). The first
line printed says which psycopg2 and libpq these are; then one JSON line per
case: {"label", "user"} after `select current_user`, or {"label",
"code", "error"} with the error's pgcode and str() exactly as psycopg2 raised
it (for a failed connection, libpq's own message).
"""
import json
import sys

import psycopg2
import psycopg2.extensions


def probe(label, params):
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as e:
        return {"label": label, "code": e.pgcode, "error": str(e)}
    try:
        with conn.cursor() as cur:
            cur.execute("select current_user")
            user = cur.fetchone()[0]
        return {"label": label, "user": user}
    except psycopg2.Error as e:
        return {"label": label, "code": e.pgcode, "error": str(e)}
    finally:
        conn.close()


def main(argv):
    if len(argv) != 2:
        print("usage: auth_probe.py CASES_JSON", file=sys.stderr)
        return 2
    print(json.dumps({"psycopg2": psycopg2.__version__, "libpq": psycopg2.extensions.libpq_version()}), flush=True)
    for case in json.loads(argv[1]):
        print(json.dumps(probe(case["label"], case["params"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
