# baton — see README.md. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
GO ?= go
BIN := bin

.PHONY: all build generate verify test bench run lint clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Regenerate db/ from queries/ and migrations/.
generate:
	$(GO) tool sqlc generate

# Fails when db/ is stale or hand-edited.
verify:
	$(GO) tool sqlc diff
	$(GO) tool sqlc vet

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Every test on a real Postgres, race detector on (see scripts/test.sh for where
# the Postgres comes from).
test:
	scripts/test.sh

# Benchmarks print figures; see docs/benchmarks.md.
bench:
	scripts/bench.sh

# Brings up Postgres if BATON_DATABASE_URL is unset, migrates, starts one master and
# two workers and submits demo tasks.
run: build
	scripts/run.sh

clean:
	rm -rf $(BIN)
