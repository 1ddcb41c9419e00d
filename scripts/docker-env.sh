#!/usr/bin/env bash
# Sourced where testcontainers runs against the local Docker engine (tests, make run).
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
