#!/usr/bin/env bash
# Runs before `npm test` (the pretest script): checks that the programs the
# tests drive are here, and installs the missing ones from Debian's packages
# when it can (root, apt-get). Otherwise it stops with one line naming what
# to install. Node packages come from `npm ci`; nothing here touches them.
set -uo pipefail

missing=()   # Debian packages to install
what=()      # what they provide, for the message

need() { # need <test command...> -- <debian package> <what>
  local args=() pkg desc
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift; pkg=$1; desc=$2
  if ! "${args[@]}" >/dev/null 2>&1; then
    missing+=("$pkg"); what+=("$desc")
  fi
}

need command -v psql -- postgresql-client "psql"
need command -v pgbench -- postgresql-client "pgbench"
need bash -c 'command -v initdb || ls /usr/lib/postgresql/*/bin/initdb' -- postgresql "PostgreSQL server binaries (initdb, pg_ctl)"
need /usr/bin/python3 -c 'import psycopg2' -- python3-psycopg2 "psycopg2 for /usr/bin/python3"
need command -v tmux -- tmux "tmux (the pseudo-terminal pgbudget top is tested in)"
need bash -c 'command -v java && command -v javac' -- openjdk-17-jdk-headless "java and javac"
need bash -c 'ls "${PGBUDGET_TEST_PGJDBC_JAR:-/nonexistent}" || ls ~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar || ls /usr/share/java/postgresql.jar' -- libpostgresql-jdbc-java "the PostgreSQL JDBC driver"
need command -v redis-server -- redis-server "redis-server (the tests of coordination start their own)"
# promtool (checks and unit-tests the chart's alert rules) and the Prometheus server that
# test/integration/prometheus.test.ts starts on a port of its own.
need bash -c 'command -v promtool && command -v prometheus' -- prometheus "promtool and the Prometheus server"
# libpq's headers and pg_config, which the devDependency pg-native (node-postgres over libpq) builds
# against. npm ci builds it before this runs, so the machine must have them already for that; here
# they are checked and installed so that the next npm ci finds them.
need bash -c 'test -f "$(pg_config --includedir)/libpq-fe.h"' -- libpq-dev "libpq's headers and pg_config (for pg-native)"

[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "pgbudget tests: installing ${packages}(for: $(IFS=,; echo "${what[*]}"))" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages) >/tmp/pgbudget-provision.log 2>&1; then
    exit 0
  fi
  echo "pgbudget tests: apt-get could not install ${packages}; see /tmp/pgbudget-provision.log" >&2
  exit 1
fi
echo "pgbudget tests need $(IFS=,; echo "${what[*]}"): install the Debian packages ${packages}and run again" >&2
exit 1
