#!/usr/bin/env bash
# The body of `make test`, `make test-unit` and `make test-e2e`: find a Postgres for
# the tests (scripts/pg-env.sh), check generated code, go.mod, formatting and vet,
# then run the tests with the race detector.
#
#   scripts/test.sh [all|unit|e2e]   (default all)
#
# unit: the checks and every package but internal/e2e; e2e: the process-level tests
# of internal/e2e (real binaries); all: both, unit first. GOTESTFLAGS adds flags.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
case "$tier" in
  all|unit|e2e) ;;
  *) echo "usage: scripts/test.sh [all|unit|e2e]" >&2; exit 2 ;;
esac
source scripts/pg-env.sh

# Under CI, as root with a cgroup2 mount, cgroup containment must work: its tests
# fail instead of skipping (internal/executor/contain_test.go).
if [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && grep -q ' cgroup2 ' /proc/self/mounts; then
  export BATON_REQUIRE_CGROUP="${BATON_REQUIRE_CGROUP:-true}"
fi
e2e_pkgs=./internal/e2e/...
if [ "$tier" != e2e ]; then
  say "checking generated code (sqlc diff)"
  go tool sqlc diff
  say "checking go.mod and go.sum are tidy (go mod tidy -diff)"
  go mod tidy -diff
  say "gofmt, go vet, staticcheck"
  unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
  if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
  go vet ./...
  go tool staticcheck ./...
  say "go test -race: unit tier (every package but internal/e2e)"
  unit_pkgs=$(go list ./... | grep -v '/internal/e2e')
  # shellcheck disable=SC2086
  go test -race -count=1 -timeout 12m ${GOTESTFLAGS:-} $unit_pkgs
  # The adopter module (its own go.mod, a replace to this repo) uses the public API
  # only, and baton's adopter test kit (batontest/apptest), which needs a URL and
  # no Docker client: give it the test server, or a throwaway container.
  say "examples/invoicing: baton from a separate module"
  adopter_url=${BATON_TEST_DATABASE_URL:-}
  if [ -z "$adopter_url" ]; then
    cid=$(docker run -d --rm -e POSTGRES_USER=baton -e POSTGRES_PASSWORD=baton -p 127.0.0.1::5432 \
      --tmpfs /var/lib/postgresql/data "$BATON_TEST_POSTGRES_IMAGE" -c fsync=off -c max_connections=300)
    trap 'docker stop "$cid" >/dev/null' EXIT
    for _ in $(seq 60); do
      docker exec "$cid" pg_isready -q -U baton -h 127.0.0.1 && break
      sleep 1
    done
    adopter_url="postgres://baton:baton@127.0.0.1:$(docker port "$cid" 5432/tcp | head -1 | sed 's/.*://')/postgres?sslmode=disable"
  fi
  # -mod=mod: a dependency baton gains must not fail this step before someone runs
  # `go mod tidy` in examples/invoicing.
  (cd examples/invoicing && export GOFLAGS="${GOFLAGS:-} -mod=mod" && go vet ./... &&
    BATON_TEST_DATABASE_URL=$adopter_url go test -race -count=1 -timeout 5m ${GOTESTFLAGS:-} ./...)
fi
if [ "$tier" != unit ]; then
  say "go test -race: e2e tier (internal/e2e, real processes)"
  # shellcheck disable=SC2086
  go test -race -count=1 -timeout 20m ${GOTESTFLAGS:-} $e2e_pkgs
  # The images: both built FROM scratch from static binaries (nothing pulled),
  # run against a migrated database, `baton healthcheck` in each. Behind the
  # build tag "images" so no other go test builds it; about 25 s with a warm
  # build cache, a few minutes on a cold one (a CGO_ENABLED=0 rebuild).
  say "go test -tags images ./deploy/ (docker build of the images)"
  go test -count=1 -timeout 10m -tags images ${GOTESTFLAGS:-} ./deploy/
fi
