#!/usr/bin/env bash
# The integration suite again on the portable I/O path (net.Socket for
# every connection), without the tests whose subject is not the proxy's I/O:
# the Dockerfile's build, the CLI's flags and exit codes, the shipped
# Prometheus rules and dashboard, `pgbudget top`, coordination through
# Redis (leases, and instances sharing budgets), the admin API's token, the
# headroom readings and dry-run accounting. They run once, in the first
# pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
mapfile -t files < <(ls build/test/integration/*.test.js | grep -v -E '/(dockerfile|cli|prometheus|top|coordination|leases|adminToken|headroom|dryRun)\.test\.js$')
# The fuzz and the soak, 60 s each in the first pass, run 30 s each here: the
# hostile traffic and the faults still go through every portable path.
PGBUDGET_IO=portable PGBUDGET_FUZZ_SECONDS=30 PGBUDGET_SOAK_SECONDS=30 exec npx tap "${files[@]}"
