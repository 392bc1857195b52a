"""django-lido's Pool under load from many threads, against a throwaway PostgreSQL.

Starts a private PostgreSQL cluster (temp dir, free port), then drives a pool of at most
``--max-size`` connections from ``--threads`` threads for ``--duration`` seconds. Along the
way one worker "forgets" a connection (drops it without returning it) and, midway, every
server process of the pool is terminated while its connections sit idle in the pool. A
monitor prints the pool's status and the server's connection count once a second.

At the end it prints the pool's statistics and checks what the run is meant to show: no
worker saw an error, the leak was noticed, dead connections were replaced, and the server
never had more connections from the pool than ``max_size``. Exits 1 if any check fails.

    ./scripts/demo.sh [--threads 16] [--duration 5]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from django_lido import Pool

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the dev-only harness/
from harness.servers import PostgresServer

APP = "lido-demo"  # application_name of the pool's connections, to count them server-side

log = logging.getLogger("demo")


class Run:
    """State shared by the workers and the monitor."""

    def __init__(self, pool: Pool, pg: PostgresServer, max_size: int) -> None:
        self.pool = pool
        self.pg = pg
        self.max_size = max_size
        self.stop = threading.Event()
        # A gate the workers pass between cycles; the monitor closes it to pause them.
        self.gate = threading.Condition()
        self.paused = False
        self.active = 0  # workers inside a cycle
        self.lock = threading.Lock()
        self.cycles = 0
        self.errors: list[str] = []
        self.backends_max = 0
        self.terminated = 0

    def record_error(self, worker: int, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"worker {worker}: {type(exc).__name__}: {exc}")
        log.error("worker %d: %s: %s", worker, type(exc).__name__, exc)

    def enter_cycle(self) -> None:
        with self.gate:
            while self.paused and not self.stop.is_set():
                self.gate.wait()
            self.active += 1

    def leave_cycle(self) -> None:
        with self.gate:
            self.active -= 1
            self.gate.notify_all()

    def pause(self) -> None:
        """Returns once every worker is between cycles, holding no connection."""
        with self.gate:
            self.paused = True
            while self.active:
                self.gate.wait()

    def resume(self) -> None:
        with self.gate:
            self.paused = False
            self.gate.notify_all()

    def sample_backends(self) -> int:
        n = self.pg.backend_count(APP)
        self.backends_max = max(self.backends_max, n)
        return n


def worker(run: Run, i: int, leak_at: float | None) -> None:
    pool = run.pool
    done = 0
    while not run.stop.is_set():
        run.enter_cycle()
        try:
            if run.stop.is_set():
                break
            if leak_at is not None and time.monotonic() >= leak_at:
                leak_at = None
                # The bug this shows: a connection taken and never returned. Dropping the
                # last reference closes it, and the pool notices through a weak reference.
                conn = pool.getconn()
                conn.execute("SELECT 1")
                log.info("worker %d: dropping a connection without returning it", i)
                del conn
                gc.collect()
                continue
            with pool.connection() as conn:
                conn.execute("INSERT INTO demo_events (worker) VALUES (%s)", (i,))
                conn.execute("SELECT count(*) FROM demo_events WHERE worker = %s", (i,)).fetchone()
            done += 1
        except Exception as exc:
            run.record_error(i, exc)
            time.sleep(0.05)
        finally:
            run.leave_cycle()
    with run.lock:
        run.cycles += done


def status_line(run: Run, t: float, backends: int) -> str:
    s = run.pool.stats()
    return (
        f"t={t:4.1f}s  size={s['pool_size']}/{s['pool_max']}  idle={s['idle']}  "
        f"in_use={s['in_use']}  waiting={s['requests_waiting']}  "
        f"requests={s['requests_num']}  server_backends={backends}"
    )


def terminate_idle_backends(run: Run) -> None:
    """Pauses the workers until every connection is back in the pool, then kills every
    server process of the pool: the idle connections are now dead, and the next checkouts
    must notice and replace them without the workers seeing an error."""
    run.pause()
    try:
        idle = run.pool.stats()["idle"]
        run.terminated = run.pg.terminate_backends(application_name=APP)
        log.warning(
            "terminated %d server processes of the pool while its %d connections sat idle",
            run.terminated,
            idle,
        )
    finally:
        run.resume()


def monitor(run: Run, start: float, duration: float) -> None:
    terminate_at = start + duration / 2
    next_tick = start + 1
    while not run.stop.is_set():
        if run.terminated == 0 and time.monotonic() >= terminate_at:
            terminate_idle_backends(run)
        if time.monotonic() >= next_tick:
            backends = run.sample_backends()
            print(status_line(run, time.monotonic() - start, backends), flush=True)
            next_tick += 1
        run.stop.wait(0.05)


def fmt_hist(name: str, h: dict[str, Any]) -> str:
    return (
        f"  {name:<16} n={h['count']:<7} p50={h['p50_ms']:8.3f}  p99={h['p99_ms']:8.3f}  "
        f"max={h['max_ms']:8.3f}  (ms)"
    )


def report(run: Run, stats: dict[str, Any], elapsed: float) -> None:
    closes = {k.removeprefix("closes_"): v for k, v in stats.items() if k.startswith("closes_")}
    print()
    print(f"pool {stats['name']!r}: {elapsed:.1f} s, {run.cycles} cycles by workers")
    print(
        f"  requests         {stats['requests_num']} served, {stats['requests_queued']} queued, "
        f"{stats['requests_timeouts']} timed out, {stats['requests_rejected']} rejected"
    )
    print(
        f"  connections      {stats['connections_num']} opened, "
        f"{stats['connections_errors']} failed to open, {stats['connections_leaked']} leaked"
    )
    print(
        f"  returns          {stats['returns_rolled_back']} rolled back, "
        f"{stats['returns_bad']} closed as broken"
    )
    print("  closes by reason " + ", ".join(f"{k} {v}" for k, v in closes.items()))
    print(fmt_hist("acquire_wait", stats["acquire_wait"]))
    print(fmt_hist("usage", stats["usage"]))
    print(fmt_hist("connection_open", stats["connection_open"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load")
    ap.add_argument("--max-size", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )

    log.info("starting a throwaway PostgreSQL")
    with PostgresServer() as pg:
        log.info("PostgreSQL on port %d in %s", pg.port, pg.tmpdir)
        pg.execute("CREATE TABLE demo_events (id bigserial PRIMARY KEY, worker int NOT NULL)")
        conninfo = pg.conninfo(application_name=APP)

        pool = Pool(
            lambda: psycopg.connect(conninfo),
            min_size=2,
            max_size=args.max_size,
            timeout=5,
            name="demo",
        )
        run = Run(pool, pg, args.max_size)
        pool.wait(timeout=10)  # min_size connections open before the load starts
        log.info("pool ready: %r", pool)

        start = time.monotonic()
        threads = [
            threading.Thread(
                target=worker,
                args=(run, i, start + args.duration * 0.3 if i == 0 else None),
                name=f"worker-{i}",
            )
            for i in range(args.threads)
        ]
        mon = threading.Thread(target=monitor, args=(run, start, args.duration), name="monitor")
        for t in threads:
            t.start()
        mon.start()
        time.sleep(args.duration)
        run.stop.set()
        run.resume()
        for t in [*threads, mon]:
            t.join(30)
        elapsed = time.monotonic() - start

        stats = dict(pool.stats())
        backends_before_close = run.sample_backends()
        rows = pg.execute("SELECT count(*) FROM demo_events")[0][0]
        pool.close()
        deadline = time.monotonic() + 5
        while (after := pg.backend_count(APP)) and time.monotonic() < deadline:
            time.sleep(0.05)

        report(run, stats, elapsed)
        print(f"  rows inserted    {rows}")
        print(
            f"  server backends  {backends_before_close} at the end, at most "
            f"{run.backends_max} while running (max_size {args.max_size}), {after} after close"
        )
        print(f"  worker errors    {len(run.errors)}")

        checks = {
            "no worker saw an error": not run.errors,
            "every cycle inserted its row": rows == run.cycles,
            "the dropped connection was reported as leaked": stats["connections_leaked"] == 1,
            "the pool's server processes were terminated midway": run.terminated > 0,
            "dead connections were replaced at checkout": stats["closes_check_failed"] > 0,
            f"server never had more than {args.max_size} connections from the pool": (
                run.backends_max <= args.max_size
            ),
            "no request timed out": stats["requests_timeouts"] == 0,
            "the pool closed all its connections": after == 0,
        }
        print()
        for what, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        for e in run.errors[:10]:
            print(f"  error: {e}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
