"""Where the time of bench/django_cycle's loop (a) goes, measured in one process.

django-lido's PostgreSQL backend (pool max 4, the same settings as bench/django_cycle's
"lido-4"), on one throwaway server (or --conninfo). Four loops, interleaved over the
repetitions, microseconds per iteration (medians):

* held: `cursor().execute("select 1")` on a connection never closed (persistent's loop);
* closed: the same with `connection.close()` after each (loop (a));
* close+reconnect: `close()` then `ensure_connection()`, no query (Django's steps, our
  short connect path and the pool's checkout and return);
* engine: the pool's `getconn()` + `putconn()` alone (probe, status read, reset snapshot).

held / closed is what loop (a) can reach at best with this glue: every microsecond that
close+reconnect costs comes off it.

    .venv313/bin/python bench/connect_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_cycle.child import configure_django
from django_cycle.server import database, db_params, prepare_database


def loops(connection: object) -> dict[str, tuple[Callable[[int], None], int]]:
    pool = connection.pool  # type: ignore[attr-defined]

    def held(n: int) -> None:
        cursor = connection.cursor  # type: ignore[attr-defined]
        for _ in range(n):
            cursor().execute("select 1")

    def closed(n: int) -> None:
        cursor, close = connection.cursor, connection.close  # type: ignore[attr-defined]
        for _ in range(n):
            cursor().execute("select 1")
            close()

    def reconnect(n: int) -> None:
        ensure, close = connection.ensure_connection, connection.close  # type: ignore[attr-defined]
        for _ in range(n):
            close()
            ensure()

    def engine(n: int) -> None:
        connection.close()  # type: ignore[attr-defined]
        get, put = pool.getconn, pool.putconn
        for _ in range(n):
            put(get())

    return {
        "held": (held, 3_000),
        "closed": (closed, 3_000),
        "close+reconnect": (reconnect, 30_000),
        "engine": (engine, 100_000),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conninfo", help="libpq conninfo of an existing server's postgres database")
    p.add_argument("--repeat", type=int, default=11, help="repetitions (%(default)s)")
    args = p.parse_args()
    with database(args.conninfo) as (admin, where, _pid):
        prepare_database(admin)
        db, version = db_params(admin)
        configure_django(
            "lido-4", db, argparse.Namespace(vendor="postgresql", driver="mysqlclient")
        )
        from django.db import connection

        connection.ensure_connection()
        timed = loops(connection)
        results: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeat):
            for name, (loop, n) in timed.items():
                connection.ensure_connection()
                t0 = time.perf_counter_ns()
                loop(n)
                results[name].append((time.perf_counter_ns() - t0) / n / 1000)
        connection.close()
        connection.close_pool()
    print(f"PostgreSQL {version} ({where}); {args.repeat} interleaved repetitions")
    med = {name: statistics.median(v) for name, v in results.items()}
    for name, value in med.items():
        spread = f"{min(results[name]):.2f}..{max(results[name]):.2f}"
        print(f"  {name:<16} {value:8.2f} µs/iteration ({spread})")
    print(f"  held / closed    {med['held'] / med['closed']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
