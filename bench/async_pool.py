"""asyncio pools: django-lido's AsyncPool vs psycopg_pool.AsyncConnectionPool, in one run.

Both pools run on the same event loop in one process against the same PostgreSQL (a
throwaway server from harness.servers unless --conninfo is given), with psycopg 3
AsyncConnections and --size connections opened ahead. Each repetition measures both
pools, in alternating order, each on a fresh pool:

* single task: --cycles `await putconn(await getconn())` cycles; µs per cycle;
* --tasks tasks on --size connections for --duration seconds, each running
  `async with pool.connection() as conn: await conn.execute("SELECT 1")` in a loop;
  queries per second, and fairness (fewest / most queries of a task).

Prints the median and the range (min-max) of each figure over --reps repetitions. Run from
the repo root:

    .venv/bin/python bench/async_pool.py [--reps 5] [--cycles 20000] [--duration 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import _common  # noqa: F401 - puts the repository root (harness) on sys.path


@dataclass
class Opened:
    getconn: Callable[[], Awaitable[Any]]
    putconn: Callable[[Any], Awaitable[None]]
    connection: Callable[[], AbstractAsyncContextManager[Any]]
    close: Callable[[], Awaitable[None]]


async def open_lido(conninfo: str, size: int) -> Opened:
    from django_lido import AsyncPool

    pool = AsyncPool(conninfo, min_size=size, max_size=size, timeout=30)
    await pool.open(wait=True)
    return Opened(pool.getconn, pool.putconn, pool.connection, pool.close)


async def open_psycopg_pool(conninfo: str, size: int) -> Opened:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(conninfo, min_size=size, max_size=size, timeout=30, open=False)
    await pool.open(wait=True)
    return Opened(pool.getconn, pool.putconn, pool.connection, pool.close)


POOLS: dict[str, Callable[[str, int], Awaitable[Opened]]] = {
    "django-lido AsyncPool": open_lido,
    "psycopg_pool AsyncConnectionPool": open_psycopg_pool,
}


async def single(pool: Opened, cycles: int) -> float:
    """µs per getconn+putconn cycle of one task."""
    for _ in range(100):
        await pool.putconn(await pool.getconn())
    t0 = time.perf_counter()
    for _ in range(cycles):
        await pool.putconn(await pool.getconn())
    return (time.perf_counter() - t0) / cycles * 1e6


async def concurrent(pool: Opened, tasks: int, duration: float) -> tuple[float, float]:
    """Queries per second of `tasks` tasks sharing the pool, and fewest/most per task."""
    counts = [0] * tasks
    stop = False

    async def worker(i: int) -> None:
        while not stop:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            counts[i] += 1

    running = [asyncio.create_task(worker(i)) for i in range(tasks)]
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    stop = True
    await asyncio.wait_for(asyncio.gather(*running), 30)
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed, min(counts) / max(max(counts), 1)


def summary(values: list[float], fmt: str) -> str:
    mid, low, high = (format(v, fmt) for v in (statistics.median(values), min(values), max(values)))
    return f"{mid} ({low}-{high})"


async def measure(conninfo: str, args: argparse.Namespace) -> None:
    results: dict[str, dict[str, list[float]]] = {
        name: {"single": [], "qps": [], "fair": []} for name in POOLS
    }
    names = list(POOLS)
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            pool = await POOLS[name](conninfo, args.size)
            try:
                results[name]["single"].append(await single(pool, args.cycles))
                qps, fair = await concurrent(pool, args.tasks, args.duration)
                results[name]["qps"].append(qps)
                results[name]["fair"].append(fair)
            finally:
                await pool.close()
    print(
        f"{args.reps} repetitions; median (min-max). Single task: {args.cycles} cycles. "
        f"{args.tasks} tasks on {args.size} connections, SELECT 1, {args.duration} s."
    )
    print(f"{'pool':34} {'µs/cycle, 1 task':>24} {'queries/s, N tasks':>26} {'fairness':>18}")
    for name, r in results.items():
        print(
            f"{name:34} {summary(r['single'], '.2f'):>24} {summary(r['qps'], ',.0f'):>26} "
            f"{summary(r['fair'], '.2f'):>18}"
        )
    ours, theirs = (results[n] for n in names)
    print(
        f"ratio (ours / psycopg_pool): cycle cost "
        f"{statistics.median(ours['single']) / statistics.median(theirs['single']):.3f}x, "
        f"throughput {statistics.median(ours['qps']) / statistics.median(theirs['qps']):.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conninfo", help="an existing server (default: a throwaway one)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=20000)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--size", type=int, default=4)
    ap.add_argument("--duration", type=float, default=2.0)
    args = ap.parse_args()
    if args.conninfo:
        asyncio.run(measure(args.conninfo, args))
        return
    from harness.servers import PostgresServer

    with PostgresServer() as pg:
        asyncio.run(measure(pg.conninfo(), args))


if __name__ == "__main__":
    main()
