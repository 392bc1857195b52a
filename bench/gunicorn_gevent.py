"""Django behind gunicorn's gevent worker: django-lido against Django's native pool,
django-db-geventpool and stock Django (CONN_MAX_AGE 0 and 60), in one run.

Each run starts a fresh ``gunicorn -k gevent --workers 2`` (harness/gunicorn_server.py) on a
throwaway PostgreSQL and drives ``/orm`` (three ORM queries) from 100 concurrent clients
(threads in ``--client-procs`` processes) for ``--seconds``, from a cold start (no
warm-up: the first connections are part of the run). The pools get ``--max-size``
connections per worker (``min_size`` equal, as Django's native pool is usually sized;
django-db-geventpool: ``MAX_CONNS``). Printed per run and,
over the ``--rounds`` (the variants interleaved, their order rotated each round), as the
median with the range: requests/s, p50 and p99 latency, the peak of server connections
(``pg_stat_activity`` by application_name, sampled every 10 ms) over the whole run and in
its first second (the cold start), and errors (non-200 answers, client timeouts, others).

    .venv/bin/python bench/gunicorn_gevent.py --seconds 5 --rounds 3

django-db-geventpool comes from PyPI (setup.sh installs it into .venv); a variant whose
backend cannot be imported is skipped with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)

from harness.asgi_server import ServerConnections, drive_processes
from harness.django_db import postgres_entry
from harness.gunicorn_server import TABLE_SQL, GunicornServer, write_project
from harness.servers import postgres_for_tests

WORKERS = 2
CLIENTS = 100


def _base(pg: Any, app: str, engine: str, age: int, options: dict[str, Any]) -> dict[str, Any]:
    return postgres_entry(pg, engine=engine, app=app, conn_max_age=age, **options)


def variants(size: int) -> dict[str, tuple[str | None, Any]]:
    """label -> (a module that must import, or None; (pg, app) -> DATABASES entry)."""
    pool = {"min_size": size, "max_size": size, "timeout": 10}
    return {
        "lido": (
            None,
            lambda pg, app: _base(pg, app, "django_lido.backends.postgresql", 0, {"pool": pool}),
        ),
        "native": (
            "psycopg_pool",
            lambda pg, app: _base(pg, app, "django.db.backends.postgresql", 0, {"pool": pool}),
        ),
        "geventpool": (
            "django_db_geventpool",
            lambda pg, app: _base(
                pg,
                app,
                "django_db_geventpool.backends.postgresql_psycopg3",
                0,
                {"MAX_CONNS": size, "REUSE_CONNS": size},
            ),
        ),
        "stock-0": (None, lambda pg, app: _base(pg, app, "django.db.backends.postgresql", 0, {})),
        "stock-60": (
            None,
            lambda pg, app: _base(pg, app, "django.db.backends.postgresql", 60, {}),
        ),
    }


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    peak: int
    cold_peak: int
    errors: int

    def line(self) -> str:
        return (
            f"{self.rps:7.0f} req/s  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:7.1f} ms  "
            f"peak conns {self.peak:3d} (cold start {self.cold_peak:3d})  errors {self.errors}"
        )


def run_one(pg: Any, label: str, make: Any, seconds: float, n: int, client_procs: int) -> Result:
    root = Path(tempfile.mkdtemp(prefix="lido_gunicorn_bench_"))
    app = f"lido_bench_{label}_{n}".replace("-", "_")
    try:
        write_project(root, databases={"default": make(pg, app)})
        server = GunicornServer(
            root, worker_class="gevent", workers=WORKERS, worker_connections=1000
        )
        with ServerConnections(pg, app, interval=0.01) as seen:
            server.start()
            try:
                start = time.monotonic()
                load = drive_processes(
                    server.port, ["/orm"], requests=10**9, concurrency=CLIENTS,
                    processes=client_procs, request_timeout=10, deadline=seconds,
                )  # fmt: skip
            finally:
                if server.stop() is None:
                    print(f"  {label}: gunicorn had to be killed\n{server.log_tail()}")
        first = [c for t, c in seen.samples if start <= t <= start + 1.0]
        errors = sum(c for s, c in load.statuses.items() if s != 200)
        return Result(
            rps=load.rps,
            p50_ms=load.percentile(50) * 1000,
            p99_ms=load.percentile(99) * 1000,
            peak=seen.peak,
            cold_peak=max(first, default=0),
            errors=errors + load.timeouts + load.other_errors,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _median_range(xs: list[float], fmt: str) -> str:
    med = statistics.median(xs)
    return f"{med:{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-size", type=int, default=10, help="connections per worker")
    ap.add_argument("--only", default="", help="comma-separated variant labels")
    ap.add_argument(
        "--client-procs", type=int, default=2, help="client processes sharing the 100 clients"
    )
    args = ap.parse_args()
    chosen = variants(args.max_size)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    for label, (module, _) in list(chosen.items()):
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"skipped {label}: {module} is not installed")
            del chosen[label]
    print(
        f"gunicorn -k gevent --workers {WORKERS}, {CLIENTS} clients, /orm (3 ORM queries), "
        f"{args.max_size} connections per worker, {args.seconds:g} s per run from a cold "
        f"start, {args.rounds} rounds interleaved, clients in {args.client_procs} processes",
        flush=True,
    )
    results: dict[str, list[Result]] = {label: [] for label in chosen}
    pg = postgres_for_tests()
    try:
        pg.execute(TABLE_SQL)
        labels = list(chosen)
        n = 0
        for r in range(args.rounds):
            shift = r % len(labels)
            for label in labels[shift:] + labels[:shift]:
                n += 1
                res = run_one(pg, label, chosen[label][1], args.seconds, n, args.client_procs)
                results[label].append(res)
                print(f"  round {r + 1} {label:>10}: {res.line()}", flush=True)
    finally:
        pg.cleanup()
    print("\nmedian [min-max] over the rounds")
    print(f"{'variant':>10} | {'req/s':>16} | {'p50 ms':>18} | {'p99 ms':>20} | "
          f"{'peak conns':>12} | {'cold peak':>12} | errors")  # fmt: skip
    for label, rs in results.items():
        if not rs:
            continue
        print(
            f"{label:>10} | {_median_range([x.rps for x in rs], '.0f'):>16} | "
            f"{_median_range([x.p50_ms for x in rs], '.1f'):>18} | "
            f"{_median_range([x.p99_ms for x in rs], '.1f'):>20} | "
            f"{_median_range([x.peak for x in rs], '.0f'):>12} | "
            f"{_median_range([x.cold_peak for x in rs], '.0f'):>12} | "
            f"{sum(x.errors for x in rs)}"
        )


if __name__ == "__main__":
    main()
