#!/usr/bin/env bash
# The body of `make bench`. Every figure comes from a DURABLE Postgres (fsync,
# synchronous_commit and full_page_writes on — the settings users run), never from
# the tests' fsync-off server:
#   1. BATON_BENCH_DATABASE_URL, if set (a superuser URL of a server you choose);
#   2. a throwaway cluster from the host's PostgreSQL server binaries, stock settings;
#   3. a Docker container of the tests' image with its stock settings.
# Then it runs the Go benchmarks (docs/benchmarks.md) and the River comparison:
# baton's BenchmarkBurnDown and River's own no-op burn-down (bench/river, a
# separate module) alternately, RUNS times each, on the same server, and prints
# one table with the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "bench.sh: $*" >&2; }
runs=${RUNS:-3}
tasks=${BATON_BENCH_TASKS:-100000}
export BATON_BENCH_TASKS=$tasks

cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT
if [ -n "${BATON_BENCH_DATABASE_URL:-}" ]; then
  url=$BATON_BENCH_DATABASE_URL
  say "using BATON_BENCH_DATABASE_URL"
elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
  dir=${TMPDIR:-/tmp}/baton-bench-pg
  rm -rf "$dir"
  url=$(scripts/hostpg.sh start "$dir" 55434 durable | tail -1)
  cleanup+=("scripts/hostpg.sh stop '$dir'; rm -rf '$dir'")
  say "durable throwaway cluster from the host's binaries: $url"
else
  source scripts/pg-env.sh   # finds or builds an image (BATON_TEST_POSTGRES_IMAGE)
  unset BATON_TEST_DATABASE_URL
  name=baton-bench-pg-$$
  docker run -d --rm --name "$name" -e POSTGRES_USER=baton -e POSTGRES_PASSWORD=baton \
    -p 127.0.0.1:55434:5432 "$BATON_TEST_POSTGRES_IMAGE" >/dev/null
  cleanup+=("docker rm -f $name >/dev/null 2>&1")
  url=postgres://baton:baton@127.0.0.1:55434/postgres?sslmode=disable
  for _ in $(seq 60); do psql "$url" -qc 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done
  say "durable Postgres container ($BATON_TEST_POSTGRES_IMAGE, stock settings): $url"
fi
export BATON_TEST_DATABASE_URL=$url
psql "$url" -Atc "SELECT 'server: ' || version() || ' | fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit') || ' full_page_writes=' || current_setting('full_page_writes')" >&2

say "Go benchmarks"
go test -run '^$' -bench "${BENCH:-.}" -benchtime ${BENCHTIME:-1x} -timeout 60m ${GOBENCHFLAGS:-} \
  ./batontest/ ./internal/failover/ ./internal/bench/ ./internal/e2e/

say "River comparison: $tasks no-op tasks/jobs, $runs alternating runs"
( cd bench/river && go build -o "${TMPDIR:-/tmp}/baton-riverburn" . )
dburl() { # URL of database $1 on the bench server
  python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(u.urlunparse(p._replace(path="/"+sys.argv[2])))' "$url" "$1"
}
baton=() river=()
for i in $(seq "$runs"); do
  b=$(go test -run '^$' -bench 'BurnDown$' -benchtime 1x -timeout 30m ./internal/bench/ | awk '/tasks\/s/ {for (f=1; f<=NF; f++) if ($(f+1) == "tasks/s") print $f}')
  baton+=("$b")
  psql "$url" -qc "DROP DATABASE IF EXISTS baton_riverbench" -c "CREATE DATABASE baton_riverbench"
  r=$("${TMPDIR:-/tmp}/baton-riverburn" -database-url "$(dburl baton_riverbench)" -jobs "$tasks" | awk '{print $(NF-1)}')
  psql "$url" -qc "DROP DATABASE IF EXISTS baton_riverbench"
  river+=("$r")
  say "run $i: baton $b tasks/s, river $r jobs/s"
done
python3 - "${baton[*]}" "${river[*]}" <<'PY'
import statistics, sys
b = [float(x) for x in sys.argv[1].split()]
r = [float(x) for x in sys.argv[2].split()]
ratios = [x / y for x, y in zip(b, r)]
print()
print("| burn-down of no-op tasks, durable Postgres | median | runs |")
print("|---|---|---|")
print(f"| baton (BenchmarkBurnDown) | {statistics.median(b):,.0f} tasks/s | {' / '.join(f'{x:,.0f}' for x in b)} |")
print(f"| River (bench/river, River's bench settings) | {statistics.median(r):,.0f} jobs/s | {' / '.join(f'{x:,.0f}' for x in r)} |")
print(f"| ratio baton / River (same run) | {statistics.median(ratios):.2f}x | {' / '.join(f'{x:.2f}' for x in ratios)} |")
PY
