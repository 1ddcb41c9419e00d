#!/usr/bin/env bash
# Re-runs the deliberate breaks of docs/testing.md: each scripts/breaks/NAME.patch
# breaks the code the way its header says; the test it names must then FAIL.
# For every patch: apply it, run the test, revert it. A patch that no longer
# applies (the code moved) is reported, and so is a test that passes while its
# code is broken: both mean docs/testing.md needs attention.
#
#   scripts/breaks.sh [NAME...]     (default: every patch; GOTESTFLAGS adds flags)
#
# Needs a Postgres like `make test` (scripts/pg-env.sh). The working tree may
# have changes, but not in the files a patch touches.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-env.sh
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for p in scripts/breaks/*.patch; do names+=("$(basename "$p" .patch)"); done
fi
failed=0
for name in "${names[@]}"; do
  patch=scripts/breaks/$name.patch
  pkg=$(sed -n 's/^# package: //p' "$patch")
  test=$(sed -n 's/^# test: //p' "$patch")
  flags=$(sed -n 's/^# flags: //p' "$patch")
  if ! git apply --check "$patch" 2>/dev/null; then
    echo "STALE  $name: the patch no longer applies (the code moved): update it and docs/testing.md"
    failed=1
    continue
  fi
  git apply "$patch"
  trap 'git apply -R "$patch"' EXIT
  # shellcheck disable=SC2086
  if out=$(go test -count=1 $flags ${GOTESTFLAGS:-} -run "$test" "$pkg" 2>&1); then
    echo "PASSED $name: $pkg $test passes with the code broken: the test proves nothing"
    failed=1
  elif grep -q -- '--- FAIL' <<<"$out"; then
    why=$(grep -m1 -E '^\s+[A-Za-z0-9_]+_test\.go:[0-9]+: ' <<<"$out" | sed 's/^ *//' | cut -c1-160 || true)
    echo "ok     $name: $pkg $test fails: ${why:-$(grep -m1 -- '--- FAIL' <<<"$out")}"
  else
    echo "BUILD  $name: $pkg did not build or run with the break:"; tail -5 <<<"$out"
    failed=1
  fi
  git apply -R "$patch"
  trap - EXIT
done
exit $failed
