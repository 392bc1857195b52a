#!/usr/bin/env bash
# Runs the demo against a throwaway PostgreSQL it starts (and removes) itself:
#   ./scripts/demo.sh [args]          a Django site on the pool, served by gunicorn (2 worker
#                                     processes x 8 threads) under HTTP load: demo/django_load.py
#   ./scripts/demo.sh threads [args]  the bare Pool under load from threads: demo/threads.py
# Does all set-up first (apt, venv, build): see scripts/setup.sh. Arguments go to the demo,
# e.g. ./scripts/demo.sh --seconds 15 --clients 32, ./scripts/demo.sh threads --threads 32
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
demo=demo/django_load.py
if [ "${1:-}" = threads ]; then
  demo=demo/threads.py
  shift
fi
bash scripts/setup.sh
unset PYTHONPATH
exec .venv/bin/python "$demo" "$@"
