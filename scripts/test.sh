#!/usr/bin/env bash
# Runs every check: set-up (apt, venv, build; see scripts/setup.sh), lint (cargo fmt, clippy,
# ruff), types (mypy), the engine's Rust tests, and the Python tests against the installed
# wheel on Python 3.11
# and on 3.13 (Django 6.1) when .venv313 exists. Every step runs even if an
# earlier one failed; the exit status is non-zero if any failed. pytest's "no tests ran"
# (exit 5) counts as a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T0=$SECONDS
bash scripts/setup.sh
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Test the installed wheel, never the source tree.
unset PYTHONPATH

# Must import the wheel installed in .venv, not the source tree.
.venv/bin/python -c 'import django_lido, sys
sys.exit(None if "site-packages" in django_lido.__file__ else
         "django_lido imported from " + django_lido.__file__ + ", not from the installed wheel")'

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/lido-test.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT

declare -a STEPS=() RESULTS=()
PASSED=0 FAILED=0 SKIPPED=0

# count_tests LOG: adds the test counts found in LOG to the totals.
count_tests() {
  local log=$1 p f s
  # cargo: "test result: ok. 12 passed; 0 failed; 1 ignored; ..."
  p=$({ grep -aoE '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored' "$log" ||
    true; } | awk '{p += $4; f += $6; s += $8} END {print p + 0, f + 0, s + 0}')
  read -r a b c <<<"$p"
  PASSED=$((PASSED + a)) FAILED=$((FAILED + b)) SKIPPED=$((SKIPPED + c))
  # pytest's closing line: "3 failed, 40 passed, 2 skipped, 1 error in 5.21s"
  local last
  last=$(grep -aE '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s' "$log" | tail -n1 || true)
  if [ -n "$last" ]; then
    p=$(awk '{
      for (i = 1; i < NF; i++) {
        if ($i !~ /^[0-9]+$/) continue
        w = $(i + 1); sub(/[,]$/, "", w)
        if (w == "passed") p += $i
        else if (w == "failed" || w == "error" || w == "errors") f += $i
        else if (w == "skipped" || w == "xfailed" || w == "deselected") s += $i
      }
    } END {print p + 0, f + 0, s + 0}' <<<"$last")
    read -r a b c <<<"$p"
    PASSED=$((PASSED + a)) FAILED=$((FAILED + b)) SKIPPED=$((SKIPPED + c))
  fi
}

# step NAME CMD...: runs CMD, shows and logs its output, records ok/FAILED.
step() {
  local name=$1; shift
  local log="$LOGDIR/${#STEPS[@]}.log" t=$SECONDS rc=0
  printf '\n=== %s: %s\n' "$name" "$*"
  { if "$@"; then echo 0 >"$log.rc"; else echo $? >"$log.rc"; fi; } 2>&1 | tee "$log"
  rc=$(cat "$log.rc")
  count_tests "$log"
  STEPS+=("$name")
  if [ "$rc" -eq 0 ]; then
    RESULTS+=("ok")
  else
    RESULTS+=("FAILED(exit $rc)")
  fi
  printf '=== %s: %s in %d s\n' "$name" "${RESULTS[-1]}" "$((SECONDS - t))"
}

step "cargo fmt" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "ruff" .venv/bin/ruff check python harness tests bench demo
step "mypy" .venv/bin/mypy python
# The stub of the compiled module against the module itself.
step "stubtest" .venv/bin/python -m mypy.stubtest django_lido._lido
step "cargo test lido-core" cargo test -p lido-core
step "pytest py3.11" .venv/bin/python -m pytest -q tests
if [ -x .venv313/bin/python ]; then
  # Django 6.1 lives here: its run of Django's own suite (marked slow) is part of it.
  step "pytest py3.13" .venv313/bin/python -m pytest -q tests -m "not slow or django_suite"
else
  # Not a failure (no Python 3.13 can be fetched from the allowed registries), but never
  # silent: the summary says that Django 6.1 went untested.
  STEPS+=("pytest py3.13")
  RESULTS+=("skipped: no Python 3.13 (pyenv or python3.13), Django 6.1 untested")
fi

echo
status=0
line=""
for i in "${!STEPS[@]}"; do
  line+="${STEPS[$i]}: ${RESULTS[$i]}; "
  case "${RESULTS[$i]}" in ok | skipped:*) ;; *) status=1 ;; esac
done
echo "steps: ${line%; } ($((SECONDS - T0)) s)"
if [ "$status" -ne 0 ]; then echo "test.sh: FAILED"; fi
echo "total: $PASSED passed, $FAILED failed, $SKIPPED skipped"
exit "$status"
