"""Checkout+return cycle cost: django-lido's Pool vs psycopg_pool vs SQLAlchemy's QueuePool.

All pools run in one process against the same PostgreSQL (a throwaway server from
harness.servers unless --conninfo is given), connecting with the same psycopg 3
conninfo. Each repetition measures every pool once, in rotating order, on a fresh pool:

* single thread: a tight loop of N `put(get())` cycles on a pool of --size connections
  (N calibrated per pool so one loop lasts about --target seconds);
* --threads threads on --size connections: all start on a barrier and cycle for --duration
  seconds; wall µs per cycle = elapsed / total cycles, fairness = min / max cycles per thread.

Medians over repetitions go to stdout and, unless --no-write, to the `pool_cycle` section of
docs/benchmarks.md. Run from the repo root:

    .venv/bin/python bench/pool_cycle.py [--pools lido,psycopg_pool,sqlalchemy]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import _common

POOLS = ("lido", "psycopg_pool", "sqlalchemy")
# Module (and attribute) each --pools name needs, checked before anything starts.
REQUIRES: dict[str, tuple[str, str]] = {
    "lido": ("django_lido", "Pool"),
    "psycopg_pool": ("psycopg_pool", "ConnectionPool"),
    "sqlalchemy": ("sqlalchemy.pool", "QueuePool"),
}
SECTION = "pool_cycle"


@dataclass
class OpenPool:
    """A pool reduced to what the loops call; get/put are pre-bound to keep the loops uniform."""

    get: Callable[[], Any]
    put: Callable[[Any], Any]
    close: Callable[[], Any]
    stats: Callable[[], dict[str, Any]] | None = None


@dataclass
class Contender:
    key: str  # row label
    opener: Callable[[str, int], OpenPool]
    informational: bool = False  # extra row, not used for ratios
    single_us: list[float] = field(default_factory=list)
    thread_us: list[float] = field(default_factory=list)
    fairness: list[float] = field(default_factory=list)
    switches: list[float] = field(default_factory=list)  # per cycle, threaded runs
    n_cycles: int = 0  # calibrated single-thread loop length


# --- pool adapters -----------------------------------------------------------------------------


def open_lido(conninfo: str, size: int) -> OpenPool:
    import psycopg
    from django_lido import Pool

    pool = Pool(
        lambda: psycopg.connect(conninfo),
        min_size=size,
        max_size=size,
        timeout=10.0,
        name="bench",
    )
    return OpenPool(pool.getconn, pool.putconn, pool.close, pool.stats)


def open_psycopg_pool(conninfo: str, size: int) -> OpenPool:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(conninfo, min_size=size, max_size=size, open=True)
    pool.wait()
    return OpenPool(pool.getconn, pool.putconn, pool.close, pool.get_stats)


def open_sqlalchemy(conninfo: str, size: int, pre_ping: bool = False) -> OpenPool:
    import psycopg
    from sqlalchemy.pool import QueuePool

    extra: dict[str, Any] = {}
    if pre_ping:
        # A plain pool can only ping through a dialect; psycopg's pings in autocommit.
        from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

        extra = {"pre_ping": True, "dialect": PGDialect_psycopg(dbapi=psycopg)}
    pool = QueuePool(lambda: psycopg.connect(conninfo), pool_size=size, max_overflow=0, **extra)
    fairy = pool.connect()
    close = type(fairy).close  # unbound: put(c) == c.close(), without a lambda in the loop
    close(fairy)
    return OpenPool(pool.connect, close, pool.dispose)


def contenders(names: list[str]) -> list[Contender]:
    out: list[Contender] = []
    for name in names:
        if name == "lido":
            out.append(Contender("lido", open_lido))
        elif name == "psycopg_pool":
            out.append(Contender("psycopg_pool", open_psycopg_pool))
        elif name == "sqlalchemy":
            out.append(Contender("sqlalchemy", open_sqlalchemy))
            out.append(
                Contender(
                    "sqlalchemy pre_ping",
                    lambda ci, n: open_sqlalchemy(ci, n, pre_ping=True),
                    informational=True,
                )
            )
    return out


def check_imports(names: list[str]) -> None:
    """Exit with a clear message if a requested pool cannot be imported."""
    failed = []
    for name in names:
        module, attr = REQUIRES[name]
        try:
            getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            failed.append(f"  {name}: cannot import {module}.{attr}: {exc!r}")
    if failed:
        sys.exit(
            "pool_cycle: requested pool(s) unavailable:\n"
            + "\n".join(failed)
            + "\n(build django-lido with maturin, install the `bench` extra, or drop them"
            " from --pools)"
        )


# --- database ----------------------------------------------------------------------------------


@contextmanager
def database(conninfo: str | None) -> Iterator[tuple[str, str]]:
    """Yield (conninfo, description): the given one, or a throwaway server cleaned up after."""
    if conninfo:
        yield conninfo, "server given by --conninfo"
        return
    try:
        from harness.servers import postgres_for_tests
    except ImportError as exc:
        sys.exit(
            f"pool_cycle: cannot import harness.servers ({exc!r});"
            " pass --conninfo to use an existing server"
        )
    server = postgres_for_tests()
    try:
        yield (
            server.conninfo(dbname="postgres", tcp=False),
            f"{type(server).__name__} from harness.servers, Unix socket",
        )
    finally:
        server.cleanup()


def server_version(conninfo: str) -> str:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        v = conn.info.server_version
    return f"{v // 10000}.{v % 10000}"


# --- measurements ------------------------------------------------------------------------------


def tight_loop(pool: OpenPool, n: int) -> float:
    """Seconds for n checkout+return cycles."""
    get, put = pool.get, pool.put
    t0 = time.perf_counter()
    for _ in itertools.repeat(None, n):
        put(get())
    return time.perf_counter() - t0


def warm_up(pool: OpenPool, size: int, cycles: int) -> None:
    """Check every connection out at once (lazy pools open them now), then cycle a bit."""
    conns = [pool.get() for _ in range(size)]
    for c in conns:
        pool.put(c)
    tight_loop(pool, cycles)


def calibrate(c: Contender, conninfo: str, size: int, target_s: float) -> int:
    """Cycles for one single-thread loop of about target_s seconds, 2 significant digits."""
    pool = c.opener(conninfo, size)
    try:
        warm_up(pool, size, 500)
        n = 200
        while (elapsed := tight_loop(pool, n)) < 0.05:
            n *= 4
    finally:
        pool.close()
    want = max(100, int(target_s * n / elapsed))
    digits = len(str(want)) - 2
    return round(want, -digits) if digits > 0 else want


def select_one(conn: Any) -> None:
    """The work done while holding a connection with --hold-query: one round trip (the
    transaction it opens is rolled back by every pool on return)."""
    cur = conn.cursor()
    cur.execute("select 1")
    cur.fetchall()
    cur.close()


def threaded(
    pool: OpenPool, threads: int, duration_s: float, hold_query: bool = False
) -> tuple[float, list[int]]:
    """Cycle from `threads` threads for duration_s; returns (elapsed seconds, cycles per thread)."""
    get, put = pool.get, pool.put
    counts = [0] * threads
    stop = [False]
    barrier = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        n = 0
        barrier.wait()
        if hold_query:
            while not stop[0]:
                c = get()
                select_one(c)
                put(c)
                n += 1
        else:
            while not stop[0]:
                put(get())
                n += 1
        counts[i] = n

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(duration_s)
    stop[0] = True
    for w in workers:
        w.join()
    return time.perf_counter() - t0, counts


def measure(c: Contender, conninfo: str, args: argparse.Namespace) -> str:
    """One repetition for one contender on a fresh pool; returns a progress line."""
    pool = c.opener(conninfo, args.size)
    try:
        warm_up(pool, args.size, max(500, c.n_cycles // 10))
        gc.collect()
        c.single_us.append(tight_loop(pool, c.n_cycles) / c.n_cycles * 1e6)
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF)
        elapsed, counts = threaded(pool, args.threads, args.duration, args.hold_query)
        after = resource.getrusage(resource.RUSAGE_SELF)
        c.thread_us.append(elapsed / max(1, sum(counts)) * 1e6)
        switched = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
        c.switches.append(switched / max(1, sum(counts)))
        c.fairness.append(min(counts) / max(1, max(counts)))
        stats = pool.stats() if (args.verbose and pool.stats) else None
    finally:
        pool.close()
    line = (
        f"{c.key}: single {c.single_us[-1]:.2f} µs, {args.threads} threads "
        f"{c.thread_us[-1]:.2f} µs in {elapsed:.3f} s, fairness {c.fairness[-1]:.2f} "
        f"(counts {counts})"
    )
    return line + (f"\n    stats {stats}" if stats else "")


# --- report ------------------------------------------------------------------------------------


def fmt(values: list[float], digits: int = 2) -> str:
    """Median, with the range over repetitions."""
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def results_table(cs: list[Contender], args: argparse.Namespace) -> str:
    headers = [
        "pool",
        "1 thread µs/cycle (N)",
        f"{args.threads} threads wall µs/cycle",
        f"{args.threads}-thread fairness",
        f"{args.threads}-thread ctx switches/cycle",
    ]
    rows = [
        [
            c.key + (" (info)" if c.informational else ""),
            f"{fmt(c.single_us)} (N={c.n_cycles:,})",
            fmt(c.thread_us),
            fmt(c.fairness),
            fmt(c.switches, 3),
        ]
        for c in cs
    ]
    return _common.md_table(headers, rows)


def ratio_table(cs: list[Contender], args: argparse.Namespace) -> str | None:
    """lido's medians over the others' (µs: lower is better; fairness: higher is better)."""
    by_key = {c.key: c for c in cs}
    lido = by_key.get("lido")
    if lido is None:
        return None
    others = [k for k in ("psycopg_pool", "sqlalchemy") if k in by_key]
    if not others:
        return None
    metrics = [
        ("1 thread µs/cycle (lower is better)", "single_us", "cost"),
        (f"{args.threads} threads wall µs/cycle (lower is better)", "thread_us", "cost"),
        (f"{args.threads}-thread fairness (higher is better)", "fairness", "fairness"),
    ]
    rows = []
    for label, attr, noun in metrics:
        row = [label]
        mine = statistics.median(getattr(lido, attr))
        for k in others:
            theirs = statistics.median(getattr(by_key[k], attr))
            row.append(f"{mine / theirs:.2f}x of {k}'s {noun}" if theirs else "n/a")
        rows.append(row)
    return _common.md_table(["metric", *(f"lido / {k}" for k in others)], rows)


def versions_line() -> str:
    import psycopg

    parts = []
    libpq = psycopg.pq.version()
    lido = _common.dist_version("django-lido")
    git = _common.git_describe()
    parts.append(f"django-lido {lido or 'source'}" + (f" (git {git})" if git else ""))
    parts.append(
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__},"
        f" libpq {libpq // 10000}.{libpq % 10000})"
    )
    for dist in ("psycopg-pool", "SQLAlchemy"):
        parts.append(f"{dist} {_common.dist_version(dist) or 'not installed'}")
    return ", ".join(parts)


def doc_section(body: str, args: argparse.Namespace, db: str, pg: str, section: str) -> str:
    mode = " (`--quick`: smoke figures, not for comparison)" if args.quick else ""
    what = ", threads running `select 1` while holding" if args.hold_query else ""
    return f"""## Pool checkout+return cycle{what}{mode}

Generated by `bench/pool_cycle.py`; everything between the `{section}` markers is rewritten
on each run.

- Date: {_common.utc_now()}
- Machine: {_common.machine_line()}
- Python: {_common.python_line()} (thread switch interval {sys.getswitchinterval() * 1e3:g} ms)
- Packages: {versions_line()}
- PostgreSQL: {pg} ({db})
- Settings: pool of {args.size} connections, {args.threads} threads for {args.duration:g} s,
  single-thread loops of ~{args.target:g} s, {args.reps} repetition(s) in rotating order
- Reproduce (from the repo root): `{_common.repro_command("bench/pool_cycle.py")}`

{body}

Figures are medians over repetitions, with the range in parentheses. A cycle is one checkout
and one return with no query (`put(get())`); each pool is used with its defaults:
django-lido `Pool(timeout=10.0)`, psycopg_pool `ConnectionPool` (no check on checkout),
SQLAlchemy `QueuePool(max_overflow=0)` (rollback on return, a no-op on an idle psycopg
connection). The `pre_ping` row pings on every checkout (one round trip) and is
informational. Fairness is min / max cycles per thread over the fixed duration (1.0 = even).
Context switches are the process's voluntary and involuntary ones (`getrusage`) during the
threaded run, per cycle: where a pool hands every returned connection to a waiter that
cannot run until it gets the GIL, each cycle costs about one (a lock convoy).
"""


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--pools",
        default=",".join(POOLS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument(
        "--conninfo",
        help="psycopg conninfo of an existing server (default: start a throwaway one)",
    )
    p.add_argument("--quick", action="store_true", help="fewer and shorter repetitions")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--reps", type=int, help="repetitions (default 5, quick 3)")
    p.add_argument("--size", type=int, default=4, help="connections per pool (%(default)s)")
    p.add_argument("--threads", type=int, default=8, help="threads (%(default)s)")
    p.add_argument("--duration", type=float, help="seconds per threaded run (1.5, quick 0.3)")
    p.add_argument("--target", type=float, help="seconds per single-thread loop (0.7, quick 0.1)")
    p.add_argument(
        "--hold-query",
        action="store_true",
        help="threaded runs do a `select 1` while holding each connection "
        "(section pool_cycle_query)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print pool stats per run")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.pools.split(",") if n.strip()]
    unknown = sorted(set(names) - set(POOLS))
    if unknown or not names:
        p.error(f"--pools: unknown {unknown}; choose from {','.join(POOLS)}")
    args.names = list(dict.fromkeys(names))
    args.reps = args.reps or (3 if args.quick else 5)
    args.duration = args.duration or (0.3 if args.quick else 1.5)
    args.target = args.target or (0.1 if args.quick else 0.7)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_imports(args.names)
    cs = contenders(args.names)
    log = sys.stderr

    with database(args.conninfo) as (conninfo, db):
        pg = server_version(conninfo)
        print(f"PostgreSQL {pg} ({db})", file=log)
        for c in cs:
            c.n_cycles = calibrate(c, conninfo, args.size, args.target)
            print(f"calibrated {c.key}: N={c.n_cycles}", file=log)
        for rep in range(args.reps):
            shift = rep % len(cs)
            for c in cs[shift:] + cs[:shift]:
                print(f"rep {rep + 1}/{args.reps} {measure(c, conninfo, args)}", file=log)

    body = results_table(cs, args)
    ratios = ratio_table(cs, args)
    if ratios:
        body += "\n\n" + ratios
    print(body)
    if not args.no_write:
        section = SECTION + ("_query" if args.hold_query else "")
        _common.replace_section(
            _common.BENCHMARKS_MD, section, doc_section(body, args, db, pg, section)
        )
        print(f"wrote {_common.BENCHMARKS_MD.relative_to(_common.REPO_ROOT)}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
