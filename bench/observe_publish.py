"""What publishing the process's pools for the host costs (django_lido.observe.publish):

1. one publish (build the record, write it atomically) and one tick with nothing changed
   (build and compare only), for 1, 4 and 16 pools, each with a connection lent out, in CPU
   time, with the runtime directory on a tmpfs and on the disk under /tmp;
2. single-thread checkout+return throughput with the publishing thread on (at its shortest
   interval, 0.25 s) and off, interleaved in one run against one throwaway PostgreSQL.

Run from the repo root after ./scripts/setup.sh:

    .venv/bin/python bench/observe_publish.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import _common  # noqa: F401  (puts the repository root, with harness/, on sys.path)
from django_lido import Pool
from django_lido.observe import publish

from harness.servers import postgres_for_tests


def publish_cost(conninfo: str, n_pools: int, reps: int) -> tuple[float, float, int]:
    """(CPU µs per write, CPU µs per unchanged tick, record bytes) for ``n_pools``
    pools."""
    pools = [Pool(conninfo, name=f"bench-{n_pools}-{i}", max_size=2) for i in range(n_pools)]
    held = []
    try:
        for pool in pools:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            held.append((pool, pool.getconn()))
        pub = publish.Publisher()
        pub.publish_once(force=True)
        # CPU time of this thread: what the publishing thread would use, whatever else the
        # machine runs meanwhile.
        t = time.thread_time()
        for _ in range(reps):
            pub.publish_once(force=True)
        write_us = (time.thread_time() - t) / reps * 1e6
        t = time.thread_time()
        for _ in range(reps):
            pub.publish_once()
        tick_us = (time.thread_time() - t) / reps * 1e6
        size = (publish.runtime_dir() / f"{os.getpid()}.json").stat().st_size
        pub.remove()
        return write_us, tick_us, size
    finally:
        for pool, conn in held:
            pool.putconn(conn)
        for pool in pools:
            pool.close()


def cycles_per_s(pool: Pool, seconds: float) -> float:
    get, put = pool.getconn, pool.putconn
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(2000):
            put(get())
        n += 2000
        if (now := time.perf_counter()) >= deadline:
            return n / (now - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    args = parser.parse_args()
    reps, rounds, seconds = (200, 4, 0.5) if args.quick else (1000, 8, 1.0)
    os.environ["LIDO_PUBLISH_INTERVAL"] = str(publish.MIN_INTERVAL)
    server = postgres_for_tests()
    made: list[str] = []
    try:
        conninfo = server.conninfo()
        publish.stop()  # the cost rows drive a Publisher by hand
        # The runtime directory's file system decides most of a write's cost: a tmpfs
        # (XDG_RUNTIME_DIR usually is one) against the disk under /tmp.
        dirs = {"tmpfs": "/dev/shm", "/tmp": "/tmp"}
        print("dir    pools  write CPU µs  unchanged tick CPU µs  record bytes")
        for label, parent in dirs.items():
            os.environ["LIDO_RUNTIME_DIR"] = _tempdir(made, parent)
            for n in (1, 4, 16):
                write_us, tick_us, size = publish_cost(conninfo, n, reps)
                print(f"{label:5s}  {n:5d}  {write_us:12.1f}  {tick_us:21.1f}  {size:12d}")

        os.environ["LIDO_RUNTIME_DIR"] = _tempdir(made, "/dev/shm")
        pool = Pool(conninfo, name="bench-cycle", max_size=4)
        cycles_per_s(pool, 0.2)
        results: dict[bool, list[float]] = {True: [], False: []}
        writes, cpu, on_time = 0, 0.0, 0.0
        for rep in range(rounds):
            for on in (True, False) if rep % 2 == 0 else (False, True):
                if on:
                    publish.ensure_started()
                else:
                    publish.stop()
                results[on].append(cycles_per_s(pool, seconds))
                p = publish.current()
                if p is not None:
                    writes, cpu, on_time = writes + p.writes, cpu + p.cpu_seconds, on_time + seconds
        publish.stop()
        pool.close()
        on, off = (statistics.median(results[k]) for k in (True, False))
        print(
            f"publisher on  {on:,.0f} checkout+return/s  ({writes} records written, its "
            f"thread's CPU {cpu / on_time * 1e3:.2f} ms per s = {cpu / on_time:.3%} of a core)"
        )
        print(f"publisher off {off:,.0f} checkout+return/s")
        print(f"difference {(on - off) / off:+.2%} (medians of {rounds} interleaved rounds)")
    finally:
        server.cleanup()
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def _tempdir(made: list[str], parent: str) -> str:
    made.append(tempfile.mkdtemp(prefix="lido-bench-", dir=parent))
    return made[-1]


if __name__ == "__main__":
    main()
