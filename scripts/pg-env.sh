#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/bench.sh: finds a Postgres for the tests
# and exports what batontest needs. Order:
#   1. BATON_TEST_DATABASE_URL, if set;
#   2. Docker + testcontainers with BATON_TEST_POSTGRES_IMAGE, if set;
#   3. Docker + the official postgres image, if it is present or can be pulled;
#   4. Docker + a Postgres image built locally by scripts/postgres-image.sh
#      (machines without registry access);
#   5. no Docker engine: a loud warning and a throwaway cluster from the host's
#      Postgres binaries (scripts/hostpg.sh), so the rest of the suite still runs.
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
  source scripts/docker-env.sh
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

