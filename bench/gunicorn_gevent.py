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

Where the time goes (not part of the default run):

- ``--only lido@50,stock-60,geventpool@8``: ``label@N`` runs a variant with N connections
  per worker instead of ``--max-size`` (the ceiling: is the connection count or the
  per-request cost the limit?).
- ``--cpu``: also prints the workers' CPU time (user+system, from /proc) per request served,
  which a machine shared with other work disturbs much less than requests/s.
- ``--profile DIR``: samples each worker with ``py-spy record`` (PyPI; raw collapsed stacks,
  idle time left out) into ``DIR/<label>-<n>-<pid>.txt`` for the whole run;
  ``--profile-summary DIR`` then prints, per variant, the sampled CPU per request split by
  where it was spent (pool, driver, Django, gevent, ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
    requests: int = 0
    cpu_ms: float = 0.0  # the workers' CPU time over the run (--cpu)
    server_cpu_ms: float = 0.0  # PostgreSQL's
    mean_conns: float = 0.0  # server connections, averaged over the run's samples

    @property
    def cpu_per_request_ms(self) -> float:
        return self.cpu_ms / self.requests if self.requests else 0.0

    @property
    def server_cpu_per_request_ms(self) -> float:
        return self.server_cpu_ms / self.requests if self.requests else 0.0

    def line(self) -> str:
        cpu = (
            f"  CPU ms/req: workers {self.cpu_per_request_ms:5.2f} "
            f"server {self.server_cpu_per_request_ms:5.2f}  mean conns {self.mean_conns:5.1f}"
            if self.cpu_ms
            else ""
        )
        return (
            f"{self.rps:7.0f} req/s  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:7.1f} ms  "
            f"peak conns {self.peak:3d} (cold start {self.cold_peak:3d})  errors {self.errors}"
            f"{cpu}"
        )


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pids: list[int]) -> float:
    """User+system CPU time of ``pids`` so far (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total * _TICK_MS


def server_cpu_ms(pg: Any) -> float:
    """CPU time the PostgreSQL server has used so far: the postmaster with its children,
    the exited ones (cutime, cstime) and the live ones."""
    try:
        master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        fields = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) * _TICK_MS
    return reaped + cpu_ms([master] + [int(c) for c in children])


def start_profilers(pids: list[int], out: Path, stem: str, seconds: float) -> list[Any]:
    """One ``py-spy record`` per worker for ``seconds`` (sampling without stopping it)."""
    spy = Path(sys.executable).with_name("py-spy")
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, round(seconds))),
                "-r",
                "250",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(out / f"{stem}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def run_one(
    pg: Any,
    label: str,
    make: Any,
    seconds: float,
    n: int,
    client_procs: int,
    cpu: bool = False,
    profile: Path | None = None,
) -> Result:
    root = Path(tempfile.mkdtemp(prefix="lido_gunicorn_bench_"))
    app = f"lido_bench_{label}_{n}".replace("-", "_").replace("@", "_")
    try:
        write_project(root, databases={"default": make(pg, app)})
        server = GunicornServer(
            root, worker_class="gevent", workers=WORKERS, worker_connections=1000
        )
        with ServerConnections(pg, app, interval=0.01) as seen:
            server.start()
            try:
                pids = server.worker_pids() if cpu or profile else []
                spies = start_profilers(pids, profile, f"{label}-{n}", seconds) if profile else []
                cpu_before, server_before = cpu_ms(pids), server_cpu_ms(pg) if cpu else 0.0
                start = time.monotonic()
                load = drive_processes(
                    server.port, ["/orm"], requests=10**9, concurrency=CLIENTS,
                    processes=client_procs, request_timeout=10, deadline=seconds,
                )  # fmt: skip
                used = cpu_ms(pids) - cpu_before if pids else 0.0
                server_used = server_cpu_ms(pg) - server_before if cpu else 0.0
                for spy in spies:
                    spy.wait(timeout=seconds + 30)
                if profile:
                    meta = {"label": label, "requests": load.ok, "pids": pids}
                    (profile / f"{label}-{n}.json").write_text(json.dumps(meta))
            finally:
                if server.stop() is None:
                    print(f"  {label}: gunicorn had to be killed\n{server.log_tail()}")
        first = [c for t, c in seen.samples if start <= t <= start + 1.0]
        during = [c for t, c in seen.samples if start <= t <= start + seconds]
        errors = sum(c for s, c in load.statuses.items() if s != 200)
        return Result(
            rps=load.rps,
            p50_ms=load.percentile(50) * 1000,
            p99_ms=load.percentile(99) * 1000,
            peak=seen.peak,
            cold_peak=max(first, default=0),
            errors=errors + load.timeouts + load.other_errors,
            requests=load.ok,
            cpu_ms=used,
            server_cpu_ms=server_used,
            mean_conns=statistics.fmean(during) if during else 0.0,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Where a sampled stack's innermost Python frame is: the first match, in this order.
_PLACES = [
    ("pool: django_lido", ("django_lido/",)),
    ("pool: psycopg_pool", ("psycopg_pool/",)),
    ("pool: django_db_geventpool", ("django_db_geventpool/",)),
    ("driver: psycopg", ("psycopg/", "psycopg_binary/")),
    ("django: db", ("django/db/",)),
    ("django: other", ("django/",)),
    ("gevent", ("gevent/", "greenlet/")),
    ("gunicorn", ("gunicorn/",)),
]
# Stacks through these frames (a part of py-spy's "Class.function (file:line)").
_THROUGH = [
    ("request start/end: close_old_connections", "close_old_connections ("),
    ("checkout: ensure_connection", ".ensure_connection ("),
    ("  get_new_connection", ".get_new_connection ("),
    ("  init_connection_state", ".init_connection_state ("),
    ("return: _close", "._close ("),
    ("execute: _execute_with_wrappers", "._execute_with_wrappers ("),
    ("gevent hub", "(gevent/hub.py"),
]


def _place(frame: str) -> str:
    for name, parts in _PLACES:
        if any(part in frame for part in parts):
            return name
    return "other"


def profile_summary(directory: Path, rate: float = 250.0) -> None:
    """Per variant, the sampled CPU per request (ms) where each sample's innermost frame is,
    and through the pool path's functions (a stack counts once per row it goes through)."""
    samples: dict[str, Counter[str]] = {}
    requests: Counter[str] = Counter()
    for meta_path in sorted(directory.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        label = meta["label"]
        requests[label] += meta["requests"]
        counts = samples.setdefault(label, Counter())
        for pid in meta["pids"]:
            raw = directory / f"{meta_path.stem}-{pid}.txt"
            if not raw.exists():
                continue
            for line in raw.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                frames = stack.split(";")
                counts["total"] += int(count)
                counts[_place(frames[-1])] += int(count)
                for name, part in _THROUGH:
                    if any(part in f for f in frames):
                        counts[name] += int(count)
    labels = list(samples)
    rows = ["total"] + [n for n, _ in _PLACES] + ["other"] + [n for n, _ in _THROUGH]
    print(f"sampled worker CPU, ms per request ({directory})")
    print(f"{'':40}" + "".join(f"{lab:>14}" for lab in labels))
    for row in rows:
        cells = [samples[lab][row] / rate * 1000 / max(1, requests[lab]) for lab in labels]
        print(f"{row:40}" + "".join(f"{c:14.3f}" for c in cells))
    print(f"{'requests':40}" + "".join(f"{requests[lab]:14d}" for lab in labels))


def _median_range(xs: list[float], fmt: str) -> str:
    med = statistics.median(xs)
    return f"{med:{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-size", type=int, default=10, help="connections per worker")
    ap.add_argument(
        "--only", default="", help="comma-separated variant labels; label@N: N per worker"
    )
    ap.add_argument(
        "--client-procs", type=int, default=2, help="client processes sharing the 100 clients"
    )
    ap.add_argument("--cpu", action="store_true", help="print the workers' CPU per request")
    ap.add_argument("--profile", type=Path, help="py-spy each worker into this directory")
    ap.add_argument("--profile-summary", type=Path, help="summarize a --profile directory")
    args = ap.parse_args()
    if args.profile_summary:
        profile_summary(args.profile_summary)
        return
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        ap.error("--profile needs py-spy in this environment: pip install py-spy")
    chosen = variants(args.max_size)
    if args.only:
        picked = {}
        for item in args.only.split(","):
            name, _, size = item.partition("@")
            picked[item] = variants(int(size) if size else args.max_size)[name]
        chosen = picked
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
                res = run_one(
                    pg, label, chosen[label][1], args.seconds, n, args.client_procs,
                    cpu=args.cpu, profile=args.profile,
                )  # fmt: skip
                results[label].append(res)
                print(f"  round {r + 1} {label:>10}: {res.line()}", flush=True)
    finally:
        pg.cleanup()
    print("\nmedian [min-max] over the rounds")
    print(f"{'variant':>10} | {'req/s':>16} | {'p50 ms':>18} | {'p99 ms':>20} | "
          f"{'peak conns':>12} | {'cold peak':>12} | errors"
          + (" | CPU ms/req: workers | server | mean conns" if args.cpu else ""))  # fmt: skip
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
            + (
                f" | {_median_range([x.cpu_per_request_ms for x in rs], '.2f')}"
                f" | {_median_range([x.server_cpu_per_request_ms for x in rs], '.2f')}"
                f" | {_median_range([x.mean_conns for x in rs], '.1f')}"
                if args.cpu
                else ""
            )
        )


if __name__ == "__main__":
    main()
