#!/usr/bin/env bash
# The body of `make chaos`: the fault campaign of docs/chaos.md, for
# CHAOS_DURATION (default 10m) with seed CHAOS_SEED (default: from the clock; the
# seed is printed so a run can be repeated). Prints the campaign's table at the end
# and exits non-zero if any invariant was violated. Then the workflow crash test
# at full size: CHAOS_WORKFLOW_RUNS (default 20) runs of the 50-step DAG while
# workers and masters are SIGKILLed and SIGSTOPped (make test runs 2).
#   CHAOS_DURATION=20m CHAOS_SEED=42 make chaos
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-env.sh
duration=${CHAOS_DURATION:-10m}
seed=${CHAOS_SEED:-0}
report=$(mktemp "${TMPDIR:-/tmp}/baton-chaos-XXXXXX.txt")
say "fault campaign for $duration (seed ${seed/#0/from the clock}); log: ${report%.txt}.log"
set +e
go test -count=1 -run '^TestChaos$' -timeout 0 -v ./internal/e2e/ \
  -chaos.duration="$duration" -chaos.seed="$seed" -chaos.report="$report" >"${report%.txt}.log" 2>&1
code=$?
set -e
grep -E '^\s+chaos_test.go:[0-9]+: chaos: (seed|.* on )' "${report%.txt}.log" | sed 's/^ *chaos_test.go:[0-9]*: //' >&2 || true
if [ -s "$report" ]; then
  cat "$report"
else
  tail -100 "${report%.txt}.log"
fi
if [ $code -ne 0 ]; then exit $code; fi
runs=${CHAOS_WORKFLOW_RUNS:-20}
say "workflow crash test: $runs runs of the 50-step DAG"
go test -count=1 -run '^TestWorkflowSIGKILLWorkers$' -timeout 30m -v ./internal/e2e/ -workflow.runs="$runs" 2>&1 |
  grep -E '^(=== RUN|--- |ok|FAIL|PASS)|workflow_crash_test.go' >&2
