#!/usr/bin/env bash
# The body of `make test`: find a Postgres for the tests (scripts/pg-env.sh), check
# generated code, vet, then run every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-env.sh

say "checking generated code (sqlc diff)"
go tool sqlc diff
say "gofmt, go vet, staticcheck"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...
go tool staticcheck ./...
say "go test -race"
go test -race -count=1 -timeout 12m ${GOTESTFLAGS:-} ./...
