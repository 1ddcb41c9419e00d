#!/usr/bin/env bash
# Grows the kept fuzz corpora (`make fuzz`). Runs every fuzz target of the given
# packages (default: all) for FUZZTIME (default 30s) each, then copies the inputs
# the fuzzer found interesting (new coverage; at most 4 KiB each) from the Go
# build cache into <package>/testdata/fuzz/<Target>/, where every `go test` run
# replays them. Commit what it adds. A failing input is written there by Go
# itself and fails the script.
#
#   FUZZTIME=1m scripts/fuzz.sh ./internal/submit
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-env.sh
say() { echo "fuzz.sh: $*" >&2; }
fuzztime=${FUZZTIME:-30s}
cache=$(go env GOCACHE)/fuzz
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(./...)
for pkg in $(go list "${pkgs[@]}"); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' || true)
  for target in $targets; do
    say "fuzzing $pkg $target for $fuzztime"
    (cd "$dir" && go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel "${FUZZPARALLEL:-1}" . >/dev/null)
    kept="$dir/testdata/fuzz/$target"
    found="$cache/$pkg/$target"
    [ -d "$found" ] || continue
    mkdir -p "$kept"
    added=0
    for f in "$found"/*; do
      name=$(basename "$f")
      if [ ! -e "$kept/$name" ] && [ "$(stat -c %s "$f")" -le 4096 ]; then
        cp "$f" "$kept/$name"
        added=$((added + 1))
      fi
    done
    say "$pkg $target: $added new corpus entries kept in ${kept#"$PWD"/}"
  done
done
