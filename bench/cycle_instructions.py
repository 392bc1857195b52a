"""Instructions per checkout+return, counted by valgrind's callgrind (repeatable on a busy
machine, unlike time): one thread, one connection, django-lido's ``Pool`` against
psycopg_pool's ``ConnectionPool``, against one throwaway PostgreSQL. The count per cycle is
the difference between a long and a short loop, so start-up cancels out.

    .venv/bin/python bench/cycle_instructions.py [--python OTHER_VENV/bin/python ...]

Each --python adds a row for django-lido as installed in that interpreter (e.g. an older
wheel), so versions can be compared in one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.servers import PostgresServer

LOOP = {
    "lido": (
        "from django_lido import Pool\n"
        "pool = Pool(lambda: psycopg.connect(conninfo), max_size=1)\n"
        "pool.putconn(pool.getconn())\n"
    ),
    "psycopg_pool": (
        "from psycopg_pool import ConnectionPool\n"
        "pool = ConnectionPool(conninfo, min_size=1, max_size=1, open=True)\n"
        "pool.wait()\n"
    ),
}
SCRIPT = (
    "import sys, psycopg\n"
    "n, conninfo = int(sys.argv[1]), sys.argv[2]\n"
    "{setup}"
    "for _ in range(n):\n"
    "    pool.putconn(pool.getconn())\n"
    "pool.close()\n"
)


def instructions(python: str, pool: str, n: int, conninfo: str) -> int:
    p = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c",
         SCRIPT.format(setup=LOOP[pool]), str(n), conninfo],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    return int(re.search(r"Collected : (\d+)", p.stderr).group(1))  # type: ignore[union-attr]


def per_cycle(python: str, pool: str, conninfo: str, reps: int) -> float:
    # The least of a few runs: the maintenance thread adds a little, at random times.
    return min(
        (instructions(python, pool, 22_000, conninfo) - instructions(python, pool, 2_000, conninfo))
        / 20_000
        for _ in range(reps)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", default=[], help="another interpreter")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("cycle_instructions: valgrind is not installed")
    with PostgresServer() as pg:
        ci = pg.conninfo()
        base = per_cycle(sys.executable, "psycopg_pool", ci, args.reps)
        print(f"{'psycopg_pool':<40} {base:>8.0f} instructions per cycle")
        for python in [sys.executable, *args.python]:
            n = per_cycle(python, "lido", ci, args.reps)
            print(f"{'lido (' + python + ')':<40} {n:>8.0f}   {n / base:.3f}x of psycopg_pool")


if __name__ == "__main__":
    main()
