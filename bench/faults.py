"""What a restart, a stopped server and a dead network cost (issue 15, points 2 and 3),
against a throwaway PostgreSQL. One run of each scenario, figures printed:

- restart: 16 threads in a getconn / ``SELECT 1`` / putconn loop on ``max_size`` 4,
  ``timeout`` 2, across ``pg_ctl restart -m fast``: requests that failed, and how long
  after the server was back the first request succeeded;
- down: the same load with the server stopped for 5 s: connect attempts per second, and
  how every failed request ended (exception type, time taken against the timeout);
- black hole: a checkout through a network whose packets are silently dropped (a network
  namespace, a veth pair and a forwarder; see harness/netns.py), ``timeout`` 2: with no
  connection open (a connect), and with four idle connections that need a round-trip
  check (``check_after_idle=0``). A checkout still blocked after 20 s is reported as such.

Run from the repo root after ./scripts/setup.sh, as root (for the namespace):

    .venv/bin/python bench/faults.py [restart] [down] [blackhole]

To measure another build, put its package first on the path, e.g.
``PYTHONPATH=/tmp/lido-before .venv/bin/python bench/faults.py``.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)
import django_lido
import psycopg
from django_lido import Pool

from harness import netns
from harness.servers import PostgresServer

THREADS = 16
MAX_SIZE = 4
TIMEOUT = 2.0

_connects = collections.Counter[str]()
_real_connect = psycopg.connect


def _counting_connect(*args: Any, **kwargs: Any) -> Any:
    _connects["attempts"] += 1
    try:
        return _real_connect(*args, **kwargs)
    except Exception:
        _connects["failed"] += 1
        raise


psycopg.connect = _counting_connect  # type: ignore[assignment]


class Load:
    """THREADS threads in a checkout / SELECT 1 / return loop until stopped."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: collections.Counter[str] = collections.Counter()
        self.failure_times: list[float] = []
        self.successes: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            where = "getconn"
            try:
                conn = self.pool.getconn(TIMEOUT)
                where = "query"
                try:
                    conn.execute("SELECT 1").fetchone()
                finally:
                    self.pool.putconn(conn)
            except Exception as exc:
                with self.lock:
                    self.failed[f"{where}: {type(exc).__name__}"] += 1
                    self.failure_times.append(time.monotonic() - t0)
                continue
            with self.lock:
                self.ok += 1
                self.successes.append(time.monotonic())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def scenario_restart(pg: PostgresServer) -> None:
    pool = Pool(pg.conninfo(tcp=True), max_size=MAX_SIZE, timeout=TIMEOUT, name="restart")
    with Load(pool) as load:
        time.sleep(1.0)
        t_stop = time.monotonic()
        pg.stop("fast")
        t_down = time.monotonic()
        pg.start()
        t_up = time.monotonic()
        time.sleep(2.0)
    # The server may accept a little before start() has confirmed it: then this is < 0.
    after = [t for t in load.successes if t > t_down]
    first = min(after) - t_up if after else float("nan")
    print(
        f"restart: server down {t_up - t_down:.2f} s (stop took {t_down - t_stop:.2f} s); "
        f"{sum(load.failed.values())} failed requests {dict(load.failed)}, {load.ok} ok; "
        f"first success {first:+.2f} s after the server was back"
    )
    pool.close()


def scenario_down(pg: PostgresServer) -> None:
    pool = Pool(pg.conninfo(tcp=True), max_size=MAX_SIZE, timeout=TIMEOUT, name="down")
    with Load(pool) as load:
        time.sleep(0.5)
        pg.stop("fast")
        _connects.clear()
        t0 = time.monotonic()
        time.sleep(5.0)
        attempts, span = _connects["attempts"], time.monotonic() - t0
        pg.start()
        t_up = time.monotonic()
        time.sleep(1.5)
    after = [t for t in load.successes if t > t_up]
    first = min(after) - t_up if after else float("nan")
    times = sorted(load.failure_times)
    longest = times[-1] if times else 0.0
    print(
        f"down 5 s: {attempts / span:.0f} connect attempts/s ({attempts} in {span:.1f} s); "
        f"failed requests {dict(load.failed)}; longest failed request {longest:.2f} s "
        f"(timeout {TIMEOUT:.1f} s); first success {first:+.2f} s after the server was back"
    )
    pool.close()


def _timed(what: str, call: Callable[[], object], limit: float = 20.0) -> None:
    result: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            call()
            result["outcome"] = "returned a connection"
        except BaseException as exc:
            result["outcome"] = f"raised {type(exc).__name__}"
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        print(f"black hole, {what}: still blocked after {limit:.0f} s (timeout {TIMEOUT:.1f} s)")
    else:
        print(
            f"black hole, {what}: {result['outcome']} after {result['took']:.2f} s "
            f"(timeout {TIMEOUT:.1f} s)"
        )


def scenario_blackhole(pg: PostgresServer) -> None:
    why = netns.unavailable()
    if why:
        print(f"black hole: skipped ({why})")
        return
    with netns.BlackHole(f"{pg.host}/.s.PGSQL.{pg.port}") as bh:
        conninfo = f"host={bh.host} port={bh.port} user={pg.user} dbname=postgres"
        fresh = Pool(conninfo, max_size=MAX_SIZE, timeout=TIMEOUT, name="bh-connect")
        idle = Pool(conninfo, max_size=MAX_SIZE, timeout=TIMEOUT, check_after_idle=0,
                    name="bh-check")  # fmt: skip
        held = [idle.getconn() for _ in range(MAX_SIZE)]
        for c in held:
            idle.putconn(c)
        bh.drop()
        _timed("a connect", lambda: fresh.getconn(TIMEOUT))
        _timed(f"{MAX_SIZE} idle connections to check", lambda: idle.getconn(TIMEOUT))
        bh.restore()
        # Pools whose checkouts may still be blocked are left to the process's exit.


def main(argv: list[str]) -> None:
    wanted = set(argv) or {"restart", "down", "blackhole"}
    print(f"django_lido from {django_lido.__file__}")
    with PostgresServer() as pg:
        if "restart" in wanted:
            scenario_restart(pg)
        if "down" in wanted:
            scenario_down(pg)
        if "blackhole" in wanted:
            scenario_blackhole(pg)
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
