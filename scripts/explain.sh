#!/usr/bin/env bash
# Loads 1,000,000 tasks (with attempts), 100,000 ended worker sessions (with failover
# events) and 10,000 ended master sessions into a throwaway test database and prints
# EXPLAIN (ANALYZE, BUFFERS) of every candidate query of the liveness sweep, the
# dispatcher, the timeout sweep and the pruner; fails if one scans a large table.
# Takes a minute or two. Uses BATON_TEST_DATABASE_URL like `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
BATON_EXPLAIN=1 go test -count=1 -timeout 30m -run '^TestExplainAtScale$' -v ./internal/retention/ \
  | grep -v -e '^=== ' -e '^--- ' -e '^PASS' -e '^ok ' -e 'explain_test.go'
