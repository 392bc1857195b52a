"""Celery prefork workers (``-P prefork -c 4``) running 400 tasks, each an ORM and a cursor
query: server sessions opened and tasks per second, for

* stock: Django's PostgreSQL backend, CONN_MAX_AGE 0 (a connection per task);
* native: Django's own pool (``OPTIONS["pool"]``, psycopg_pool), which Celery's fixup
  closes around every task in a prefork child;
* lido: ``django_lido.backends.postgresql`` with ``OPTIONS["pool"]`` (the fixup calls
  ``close_pool()`` around every task too);
* lido-nokey: ours with no ``"pool"`` key (pooling is on by default; the fixup then only
  calls ``close()``).

Pools are ``min_size`` 1, ``max_size`` 2 per worker process. Each variant gets a fresh
database on one throwaway PostgreSQL (sessions are ``pg_stat_database.sessions`` of that
database, read after the worker stopped) and one throwaway Redis broker; the worker is
started and ready before the clock starts. Variants are interleaved over ``--rounds``.

    .venv/bin/python bench/celery_prefork.py [--tasks 400] [--concurrency 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, python_line

from harness.celery_worker import (
    CeleryWorker,
    create_table_sql,
    run_tasks,
    write_project,
)
from harness.redis import RedisServer
from harness.servers import PostgresServer

POOL = {"min_size": 1, "max_size": 2}
STOCK = "django.db.backends.postgresql"
LIDO = "django_lido.backends.postgresql"

VARIANTS: dict[str, tuple[str, dict[str, Any] | None, tuple[str, ...]]] = {
    # name: ENGINE, OPTIONS["pool"] (None: no key), INSTALLED_APPS
    "stock": (STOCK, None, ()),
    "native": (STOCK, POOL, ()),
    "lido": (LIDO, POOL, ("django_lido",)),
    "lido-nokey": (LIDO, None, ("django_lido",)),
}


def run_variant(
    pg: PostgresServer, redis: RedisServer, name: str, tasks: int, concurrency: int, n: int
) -> dict[str, Any]:
    engine, pool, apps = VARIANTS[name]
    dbname = f"celery_{name.replace('-', '_')}_{n}"
    pg.create_database(dbname)
    pg.execute(create_table_sql(), dbname=dbname)
    options: dict[str, Any] = {}
    if pool is not None:
        options["pool"] = dict(pool)
    entry = {
        "ENGINE": engine,
        "NAME": dbname,
        "USER": pg.user,
        "HOST": pg.host,
        "PORT": str(pg.port),
        "CONN_MAX_AGE": 0,
        "OPTIONS": options,
    }
    directory = Path(tempfile.mkdtemp(prefix="lido-celery-bench-"))
    try:
        broker, backend = redis.broker_url(), redis.backend_url()
        config = write_project(directory, {"default": entry}, broker, backend, apps=apps)
        (before,) = pg.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname]
        )[0]
        worker = CeleryWorker(directory, config, pool="prefork", concurrency=concurrency)
        with worker:
            start = time.monotonic()
            try:
                run_tasks(broker, backend, tasks, timeout=300)
                error = ""
            except Exception as exc:  # reported, not hidden: a variant may fail
                error = f"{type(exc).__name__}: {exc}"[:200]
            elapsed = time.monotonic() - start
        (after,) = pg.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname])[
            0
        ]
        return {
            "sessions": after - before,
            "rate": tasks / elapsed,
            "error": error,
            "tracebacks": worker.log_tail(100000).count("Traceback"),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    names = args.variants.split(",")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with PostgresServer() as pg, RedisServer() as redis:
        for n in range(args.rounds):
            for name in names:
                results[name].append(run_variant(pg, redis, name, args.tasks, args.concurrency, n))
                print(f"round {n} {name}: {results[name][-1]}", file=sys.stderr)
    print(f"{machine_line()}; {python_line()}")
    print(
        f"{args.tasks} tasks, celery -P prefork -c {args.concurrency}, pools {POOL} per "
        f"process, {args.rounds} round(s) (median)"
    )
    print(f"{'variant':<12} {'sessions':>9} {'tasks/s':>8}  errors")
    for name in names:
        runs = results[name]
        sessions = statistics.median(r["sessions"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        errors = "; ".join(
            r["error"] or f"{r['tracebacks']} tracebacks in the worker log"
            for r in runs
            if r["error"] or r["tracebacks"]
        )
        print(f"{name:<12} {sessions:>9.0f} {rate:>8.0f}  {errors or '0'}")


if __name__ == "__main__":
    main()
