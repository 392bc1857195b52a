"""A Django site on django-lido's pool, served by gunicorn and put under load.

Starts a throwaway PostgreSQL with a table of 1,000 rows, then gunicorn (gthread: 2 worker
processes x 8 threads) serving ``demo/django_site`` with ``ENGINE
"django_lido.backends.postgresql"``, ``OPTIONS={"pool": {"max_size": 4}}`` and
``CONN_MAX_AGE=0``: each worker process has one pool of at most 4 connections shared by its
8 threads. 16 client threads with keep-alive connections then hit ``/item/<id>`` (two
queries) and, one request in 20, ``/slow/<id>`` (a transaction held ~5 ms), while
``pg_stat_activity`` is polled for the peak number of server connections. At the end each
worker's ``/pool-stats`` is fetched and a summary printed. Exits 1 if a request failed or
the server saw more connections than workers x max_size.

    ./scripts/demo.sh [--seconds 8] [--clients 16]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psycopg

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the dev-only harness/
from harness.servers import PostgresServer, free_port

SITE_DIR = Path(__file__).resolve().parent / "django_site"
DB_NAME = "lido_demo"
ROWS = 1000
GUNICORN_REQUIREMENT = "gunicorn>=23"
SERVER_CONNECTIONS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
)
Gunicorn = subprocess.Popen[bytes]
# A keep-alive connection the server closed between two requests: reconnect and resend.
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


class Client(threading.Thread):
    """One keep-alive HTTP connection sending requests back to back until ``stop``."""

    def __init__(self, i: int, port: int, slow_every: int, stop: threading.Event) -> None:
        super().__init__(name=f"client-{i}", daemon=True)
        self.port = port
        self.slow_every = slow_every
        self.stop = stop
        self.rng = random.Random(i)
        self.latencies: list[float] = []  # seconds, one per successful request
        self.slow = 0
        self.errors: list[str] = []

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def get(self, conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def run(self) -> None:
        conn = self.connect()
        while not self.stop.is_set():
            pk = self.rng.randint(1, ROWS)
            slow = self.rng.randrange(self.slow_every) == 0
            path = f"/{'slow' if slow else 'item'}/{pk}"
            t0 = time.perf_counter()
            try:
                try:
                    status, body = self.get(conn, path)
                except STALE_CONNECTION:
                    conn.close()
                    conn = self.connect()
                    status, body = self.get(conn, path)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")  # the traceback is on gunicorn's stderr
                if json.loads(body)["id"] != pk:
                    raise RuntimeError(f"wrong row: {body[:200]!r}")
            except Exception as exc:
                self.errors.append(f"GET {path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = self.connect()
                time.sleep(0.05)
                continue
            self.latencies.append(time.perf_counter() - t0)
            self.slow += slow
        conn.close()


def fetch_json(port: int, path: str) -> dict[str, Any] | None:
    """GET on a fresh connection (so any worker may accept it); None if it does not connect,
    RuntimeError if it answers with an error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
    data: dict[str, Any] = json.loads(body)
    return data


def worker_stats(
    port: int, workers: int, timeout: float, proc: Gunicorn
) -> dict[int, dict[str, Any]]:
    """``/pool-stats`` of each worker process (by pid), asked until all answered or timeout."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {proc.returncode}")
        stats = fetch_json(port, "/pool-stats")
        if stats is None:
            time.sleep(0.05)
        else:
            seen[stats["pid"]] = stats
    return seen


@contextlib.contextmanager
def gunicorn(args: argparse.Namespace, pg: PostgresServer) -> Iterator[tuple[int, Gunicorn]]:
    """Runs gunicorn until the block exits; yields its port and process."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loadsite.settings",
        "LIDO_DEMO_DB_NAME": DB_NAME,
        "LIDO_DEMO_DB_HOST": "127.0.0.1",
        "LIDO_DEMO_DB_PORT": str(pg.port),
        "LIDO_DEMO_DB_USER": pg.user,
        "LIDO_DEMO_POOL_MAX_SIZE": str(args.max_size),
    }
    cmd = [
        sys.executable, "-m", "gunicorn", "--chdir", str(SITE_DIR),
        "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
        "--workers", str(args.workers), "--threads", str(args.threads),
        "--keep-alive", "30", "--graceful-timeout", "5", "--log-level", "warning",
        "loadsite.wsgi",
    ]  # fmt: skip
    # Its own session: a Ctrl-C reaches only this script, which then stops gunicorn.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: graceful shutdown of the master and its workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def watch(
    monitor: psycopg.Connection[Any], clients: list[Client], start: float, seconds: float
) -> int:
    """Polls pg_stat_activity until ``seconds`` of load are over; returns the peak count."""
    peak = 0
    next_tick = start + 1
    while (now := time.monotonic()) < start + seconds:
        row = monitor.execute(SERVER_CONNECTIONS_SQL, (DB_NAME,)).fetchone()
        conns = row[0] if row else 0
        peak = max(peak, conns)
        if now >= next_tick:
            done = sum(len(c.latencies) for c in clients)
            say(f"t={now - start:2.0f}s  {done:6d} requests  {conns} server connections")
            next_tick += 1
        time.sleep(0.01)
    return peak


def run(args: argparse.Namespace) -> int:
    with PostgresServer() as pg:
        say(f"PostgreSQL on port {pg.port} ({pg.tmpdir})")
        pg.create_database(DB_NAME)
        pg.execute(
            "CREATE TABLE loadsite_item (id bigint PRIMARY KEY, name varchar(50) NOT NULL,"
            " value integer NOT NULL);"
            " INSERT INTO loadsite_item SELECT n, 'item ' || n, n * 7 % 1000"
            f" FROM generate_series(1, {ROWS}) AS n",
            dbname=DB_NAME,
        )
        with gunicorn(args, pg) as (port, proc):
            ready = worker_stats(port, args.workers, 30, proc)
            if not ready:
                raise RuntimeError("gunicorn did not answer within 30 s")
            say(
                f"gunicorn on 127.0.0.1:{port}: {len(ready)} of {args.workers} workers answered, "
                f"{args.threads} threads each; {args.clients} clients for {args.seconds:g} s"
            )
            stop = threading.Event()
            clients = [Client(i, port, args.slow_every, stop) for i in range(args.clients)]
            with psycopg.connect(pg.conninfo(), autocommit=True) as monitor:
                try:
                    start = time.monotonic()
                    for c in clients:
                        c.start()
                    peak = watch(monitor, clients, start, args.seconds)
                finally:
                    stop.set()
                    for c in clients:
                        c.join(30)
                elapsed = time.monotonic() - start
            try:
                stats = worker_stats(port, args.workers, 10, proc)
            except RuntimeError as exc:
                say(f"no pool statistics: {exc}")
                stats = {}
    return report(args, clients, elapsed, peak, stats)


def report(
    args: argparse.Namespace,
    clients: list[Client],
    elapsed: float,
    peak: int,
    stats: dict[int, dict[str, Any]],
) -> int:
    lat = sorted(x * 1000 for c in clients for x in c.latencies)
    errors = [e for c in clients for e in c.errors]
    slow = sum(c.slow for c in clients)
    limit = args.workers * args.max_size
    print()
    print(
        f"Django on gunicorn gthread ({args.workers} workers x {args.threads} threads), "
        f"pool max_size {args.max_size} per worker, CONN_MAX_AGE=0, {args.clients} clients"
    )
    rate = len(lat) / elapsed
    print(f"  requests     {len(lat)} in {elapsed:.1f} s ({slow} slow), {rate:.0f} req/s")
    print(
        f"  latency ms   p50 {pct(lat, 50):.2f}  p90 {pct(lat, 90):.2f}  p99 {pct(lat, 99):.2f}"
        f"  max {lat[-1] if lat else float('nan'):.2f}"
    )
    print(f"  errors       {len(errors)}")
    print(f"  PostgreSQL   peak {peak} server connections (limit {args.workers} x {args.max_size})")
    checkouts = sum(s["requests_num"] for s in stats.values())
    print(f"  pools        {checkouts} checkouts in all (Django takes one per request)")
    print()
    print(
        "  worker   pool  requests  queued  wait p50/p99 ms  usage p50/p99 ms"
        "  opened  lost  timeouts"
    )
    for pid, s in sorted(stats.items()):
        wait, usage = s["acquire_wait"], s["usage"]
        print(
            f"  {pid:<7} {s['pool_size']:>2}/{s['pool_max']:<2} {s['requests_num']:>9}"
            f" {s['requests_queued']:>7}  {wait['p50_ms']:6.2f} /{wait['p99_ms']:6.2f}"
            f"   {usage['p50_ms']:6.2f} /{usage['p99_ms']:6.2f}"
            f"  {s['connections_num']:>6} {s['connections_lost']:>5} {s['requests_timeouts']:>9}"
        )
    if len(stats) < args.workers:
        print(f"  ({args.workers - len(stats)} worker(s) did not answer /pool-stats)")
    for e in errors[:5]:
        print(f"  error: {e}")
    return 1 if errors or peak > limit or not lat else 0


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    sys.exit(128 + signum)  # unwinds through the cleanup like Ctrl-C does


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of load")
    ap.add_argument("--clients", type=int, default=16, help="client threads (keep-alive)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    ap.add_argument("--threads", type=int, default=8, help="threads per worker")
    ap.add_argument("--max-size", type=int, default=4, help="pool max_size per worker")
    ap.add_argument("--slow-every", type=int, default=20, help="1 in N requests is slow")
    args = ap.parse_args()
    if importlib.util.find_spec("gunicorn") is None:
        say(f"gunicorn is not installed: pip install '{GUNICORN_REQUIREMENT}'")
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except RuntimeError as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
