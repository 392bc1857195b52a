#!/usr/bin/env bash
# Runs the thread demo (demo/threads.py) against a throwaway PostgreSQL it starts itself.
# Does all set-up first (apt, venv, build): see scripts/setup.sh. Arguments go to the demo,
# e.g. ./scripts/demo.sh --threads 32 --duration 10
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
unset PYTHONPATH
exec .venv/bin/python demo/threads.py "$@"
