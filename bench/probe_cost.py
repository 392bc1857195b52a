"""What the checkout socket probe costs: django-lido's single-thread checkout+return cycle
with the probe on (the default) and off, interleaved in one run against one throwaway
PostgreSQL. Run from the repo root after ./scripts/setup.sh:

    .venv/bin/python bench/probe_cost.py
"""

from __future__ import annotations

import statistics
import time

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)
import psycopg
from django_lido import Pool

from harness.servers import postgres_for_tests

CYCLES = 300_000
REPS = 5


def cycle_us(pool: Pool) -> float:
    get, put = pool.getconn, pool.putconn
    t = time.perf_counter()
    for _ in range(CYCLES):
        put(get())
    return (time.perf_counter() - t) / CYCLES * 1e6


def main() -> None:
    server = postgres_for_tests()
    try:
        conninfo = server.conninfo()
        pools = {
            probe: Pool(lambda: psycopg.connect(conninfo), max_size=4, probe=probe)
            for probe in (True, False)
        }
        for pool in pools.values():
            for _ in range(1000):
                pool.putconn(pool.getconn())
        results: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(REPS):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for probe in order:
                results[probe].append(cycle_us(pools[probe]))
        on, off = (statistics.median(results[p]) for p in (True, False))
        print(f"probe on  {on:.3f} µs/cycle  {sorted(round(x, 3) for x in results[True])}")
        print(f"probe off {off:.3f} µs/cycle  {sorted(round(x, 3) for x in results[False])}")
        print(f"probe cost {on - off:.3f} µs per checkout ({(on - off) / on:.0%} of the cycle)")
        for pool in pools.values():
            pool.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
