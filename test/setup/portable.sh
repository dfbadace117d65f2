#!/usr/bin/env bash
# The integration suite again on the portable I/O path (net.Socket for
# every connection), without the tests whose subject is not the proxy's I/O:
# the Dockerfile's build, the CLI's flags and exit codes, the shipped
# Prometheus rules and dashboard, `pgbudget top`, and coordination through
# Redis (leases, and instances sharing budgets). They run once, in the
# first pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
mapfile -t files < <(ls build/test/integration/*.test.js | grep -v -E '/(dockerfile|cli|prometheus|top|coordination|leases)\.test\.js$')
PGBUDGET_IO=portable exec npx tap "${files[@]}"
