#!/usr/bin/env bash
# The body of `make bench`: the benchmarks of docs/benchmarks.md, on the same
# Postgres source as the tests. Figures are printed as benchmark metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-env.sh
go test -run '^$' -bench . -benchtime ${BENCHTIME:-1x} -timeout 30m ${GOBENCHFLAGS:-} \
  ./batontest/ ./internal/failover/ ./internal/bench/ ./internal/e2e/
