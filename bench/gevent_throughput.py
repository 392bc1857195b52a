"""Checkouts per second under gevent: 50 greenlets share a pool of 4 connections, each doing
getconn / ``SELECT 1`` / putconn for a few seconds after ``gevent.monkey.patch_all()``,
django-lido's ``Pool`` against psycopg_pool's ``ConnectionPool``, against one throwaway
PostgreSQL. Each run is a fresh interpreter (patch_all() must come first).

    .venv/bin/python bench/gevent_throughput.py [--seconds 3] [--runs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.servers import PostgresServer

CHILD = """
from gevent import monkey
monkey.patch_all()
import sys, time, gevent
which, conninfo, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if which == "lido":
    from django_lido import Pool
    pool = Pool(conninfo, max_size=4, timeout=10)
else:
    from psycopg_pool import ConnectionPool
    pool = ConnectionPool(conninfo, min_size=4, max_size=4, timeout=10, open=True)
    pool.wait()
n = 0
stop = time.monotonic() + seconds
def work():
    global n
    while time.monotonic() < stop:
        c = pool.getconn()
        c.execute("SELECT 1")
        pool.putconn(c)
        n += 1
gevent.joinall([gevent.spawn(work) for _ in range(50)])
pool.close()
print(n / seconds)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with PostgresServer() as pg:
        for which in ("lido", "psycopg_pool"):
            rates = [
                float(
                    subprocess.run(
                        [sys.executable, "-c", CHILD, which, pg.conninfo(), str(args.seconds)],
                        capture_output=True, text=True, check=True, timeout=60 + args.seconds,
                    ).stdout.split()[-1]
                )
                for _ in range(args.runs)
            ]  # fmt: skip
            print(f"{which:<14} {max(rates):>8.0f} checkouts/s (best of {args.runs})")


if __name__ == "__main__":
    main()
