# baton — see README.md. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
GO ?= go
BIN := bin

.PHONY: all build generate verify tidy-check test test-unit test-e2e fuzz bench chaos run lint clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Regenerate db/ from queries/ and migrations/.
generate:
	$(GO) tool sqlc generate

# Fails when db/ is stale or hand-edited, or when go.mod/go.sum are not tidy.
verify: tidy-check
	$(GO) tool sqlc diff
	$(GO) tool sqlc vet

# Fails (printing the diff) when `go mod tidy` would change go.mod or go.sum.
tidy-check:
	$(GO) mod tidy -diff

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Every test on a real Postgres, race detector on (see scripts/test.sh for where
# the Postgres comes from): the checks, then both tiers below. CI runs this.
test:
	scripts/test.sh all

# Tier 1: the checks and every package's tests except the process-level ones.
test-unit:
	scripts/test.sh unit

# Tier 2: the process-level tests (real binaries, SIGKILL/SIGSTOP/SIGTERM, Postgres
# restart and switchover, the short fault campaign; ~6 min on 2 cores).
test-e2e:
	scripts/test.sh e2e

# Grows the kept fuzz corpora (testdata/fuzz); FUZZTIME per target, default 30s.
fuzz:
	scripts/fuzz.sh

# Benchmarks print figures; see docs/benchmarks.md.
bench:
	scripts/bench.sh

# The fault campaign (docs/chaos.md): CHAOS_DURATION (default 10m), CHAOS_SEED.
chaos:
	scripts/chaos.sh

# Brings up Postgres if BATON_DATABASE_URL is unset, migrates, starts one master and
# two workers and submits demo tasks.
run: build
	scripts/run.sh

clean:
	rm -rf $(BIN)
