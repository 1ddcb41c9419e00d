#!/usr/bin/env bash
# The body of `make test`: find a Postgres for the tests, check generated code, vet,
# then run every test with the race detector.
#
# Postgres source, in order:
#   1. BATON_TEST_DATABASE_URL, if set;
#   2. Docker + testcontainers with BATON_TEST_POSTGRES_IMAGE, if set;
#   3. Docker + the official postgres image, if it is present or can be pulled;
#   4. Docker + a Postgres image built locally by scripts/postgres-image.sh
#      (machines without registry access);
#   5. no Docker engine: a loud warning and a throwaway cluster from the host's
#      Postgres binaries (scripts/hostpg.sh), so the rest of the suite still runs.
set -euo pipefail
cd "$(dirname "$0")/.."

official=${BATON_OFFICIAL_POSTGRES_IMAGE:-postgres:17}
say() { echo "test.sh: $*" >&2; }

if [ -n "${BATON_TEST_DATABASE_URL:-}" ]; then
  say "using BATON_TEST_DATABASE_URL"
elif timeout 20 docker info >/dev/null 2>&1; then
  if [ -z "${BATON_TEST_POSTGRES_IMAGE:-}" ]; then
    if docker image inspect "$official" >/dev/null 2>&1 || timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
      export BATON_TEST_POSTGRES_IMAGE=$official
    else
      say "cannot pull $official: building a local Postgres image instead"
      BATON_TEST_POSTGRES_IMAGE=$(scripts/postgres-image.sh | tail -1)
      export BATON_TEST_POSTGRES_IMAGE
    fi
  fi
  # Testcontainers' reaper image comes from a registry too; without one, run without it
  # (containers are still terminated by the harness).
  if [ -z "${TESTCONTAINERS_RYUK_DISABLED:-}" ] && ! docker image inspect testcontainers/ryuk:0.14.0 >/dev/null 2>&1 \
     && ! timeout 60 docker pull -q testcontainers/ryuk:0.14.0 >/dev/null 2>&1; then
    export TESTCONTAINERS_RYUK_DISABLED=true
  fi
  # Testcontainers may guess the gateway address as the Docker host (seen on these
  # machines); a local engine publishes ports on localhost.
  if [ -z "${TESTCONTAINERS_HOST_OVERRIDE:-}" ] && [[ "${DOCKER_HOST:-unix://}" == unix://* ]]; then
    export TESTCONTAINERS_HOST_OVERRIDE=localhost
  fi
  say "using testcontainers with image $BATON_TEST_POSTGRES_IMAGE (TESTCONTAINERS_RYUK_DISABLED=${TESTCONTAINERS_RYUK_DISABLED:-})"
else
  echo "########################################################################" >&2
  echo "# test.sh: THE DOCKER ENGINE DOES NOT ANSWER (docker info failed).      #" >&2
  echo "# Falling back to the host's Postgres binaries; the testcontainers path #" >&2
  echo "# is NOT exercised in this run.                                         #" >&2
  echo "########################################################################" >&2
  pgdir=${TMPDIR:-/tmp}/baton-test-pg
  BATON_TEST_DATABASE_URL=$(scripts/hostpg.sh start "$pgdir" 55433 | tail -1)
  export BATON_TEST_DATABASE_URL
  trap 'scripts/hostpg.sh stop "$pgdir"' EXIT
fi

say "checking generated code (sqlc diff)"
go tool sqlc diff
say "go vet + staticcheck"
go vet ./...
go tool staticcheck ./...
say "go test -race"
go test -race -count=1 -timeout 12m ${GOTESTFLAGS:-} ./...
