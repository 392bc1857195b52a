"""Django under ASGI: a real uvicorn serving async views (aget, acount, async for) and sync
views under bounded load, one throwaway PostgreSQL, django-lido builds side by side.

Each build runs the same project (harness/asgi_server.py) at each CONN_MAX_AGE, with a pool
of --max-size connections (pool timeout 5 s): requests OK / 5xx / client timeouts, req/s,
p50/p99, the peak of server connections (pg_stat_activity by application_name), and the
pool's in_use and connections_leaked once the load is over. The installed wheel is
"this"; other builds come from ``--build NAME=DIR`` (a directory holding a ``django_lido``
package, put first on the server's PYTHONPATH), e.g. the branch start:

    .venv/bin/maturin build --release -o /tmp/w ...   # at the older commit
    .venv/bin/python -m pip install --no-deps --target /tmp/lido_head /tmp/w/*.whl
    .venv/bin/python bench/asgi_requests.py --build head=/tmp/lido_head

``--native`` instead compares, on async views only, uvicorn with --workers 2 and 50
clients: django-lido (CONN_MAX_AGE 0) against Django's native pool, the same max_size per
worker, and as the ceiling ("no-db") a view that makes the same three trips to Django's
sync thread without touching the database.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.asgi_server import (
    TABLE_SQL,
    ServerConnections,
    UvicornServer,
    drive,
    stats,
    write_project,
)
from harness.django_db import postgres_entry
from harness.servers import postgres_for_tests

LIDO_ENGINE = "django_lido.backends.postgresql"
NATIVE_ENGINE = "django.db.backends.postgresql"


def entry(pg: Any, app: str, engine: str, age: int | None, max_size: int) -> dict[str, Any]:
    if engine == LIDO_ENGINE:
        pool: dict[str, Any] = {"max_size": max_size, "timeout": 5}
    else:
        pool = {"min_size": max_size, "max_size": max_size, "timeout": 5}
    return postgres_entry(pg, engine=engine, app=app, conn_max_age=age, pool=pool)


def run(
    pg: Any,
    label: str,
    *,
    engine: str,
    age: int | None,
    max_size: int,
    pythonpath: list[str],
    paths: list[str],
    requests: int,
    concurrency: int,
    workers: int,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="lido_asgi_bench_"))
    app = f"lido_bench_{label}_{age}".replace("-", "_")
    try:
        write_project(root, database=entry(pg, app, engine, age, max_size))
        with UvicornServer(root, workers=workers, pythonpath=pythonpath) as server:
            # One warm-up round, not counted.
            drive(server.port, paths, requests=concurrency, concurrency=concurrency)
            with ServerConnections(pg, app) as seen:
                load = drive(
                    server.port,
                    paths,
                    requests=requests,
                    concurrency=concurrency,
                    request_timeout=10,
                    deadline=90,
                )
            after = ""
            if engine == LIDO_ENGINE:
                time.sleep(1)  # the last requests' ends
                s = stats(server.port)
                if s:  # no pool where no request touched the database
                    after = f", then in_use {s['in_use']}, leaked {s['connections_leaked']}"
        print(
            f"{label:>8} CONN_MAX_AGE={age!s:<4} {load.summary()}, "
            f"peak server connections {seen.peak}{after}",
            flush=True,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--ages", default="60,0")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--max-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="each round swaps the builds' order")
    ap.add_argument("--native", action="store_true")
    args = ap.parse_args()
    pg = postgres_for_tests()
    try:
        pg.execute(TABLE_SQL)
        if args.native:
            common = dict(
                age=0, max_size=10, pythonpath=[], paths=["/async_orm"],
                requests=args.requests, concurrency=50, workers=2,
            )  # fmt: skip
            print("uvicorn --workers 2, 50 clients, async view, max_size 10 per worker")
            engines = [("lido", LIDO_ENGINE), ("native", NATIVE_ENGINE)]
            for i in range(args.rounds):
                for label, engine in engines[:: -1 if i % 2 else 1]:
                    run(pg, label, engine=engine, **common)
                # The ceiling: the same three trips to Django's sync thread, no database.
                run(pg, "no-db", engine=LIDO_ENGINE, **{**common, "paths": ["/async_hops"]})
            return
        builds = [("this", [])] + [
            (name, [path]) for name, _, path in (b.partition("=") for b in args.build)
        ]
        print(
            f"uvicorn, 1 worker, {args.requests} requests from {args.concurrency} clients "
            f"(async and sync views), pool max_size {args.max_size}, timeout 5 s"
        )
        ages = [None if a == "None" else int(a) for a in args.ages.split(",")]
        for i, age in ((i, age) for i in range(args.rounds) for age in ages):
            for label, pythonpath in builds[:: -1 if i % 2 else 1]:
                run(
                    pg, label, engine=LIDO_ENGINE, age=age, max_size=args.max_size,
                    pythonpath=pythonpath, paths=["/async_orm", "/sync_orm"],
                    requests=args.requests, concurrency=args.concurrency, workers=1,
                )  # fmt: skip
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()
