#!/usr/bin/env bash
# The body of `make run`: baton dev with the Docker settings testcontainers needs
# here. With BATON_DATABASE_URL set it uses that database; otherwise baton dev
# starts Postgres itself (Docker, else the host's Postgres binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BATON_DATABASE_URL:-}" ] && timeout 20 docker info >/dev/null 2>&1; then
  source scripts/docker-env.sh
fi
exec bin/baton dev "$@"
