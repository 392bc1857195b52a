"""The fairness CPython's GIL alone gives: 8 threads looping for 1.5 s with no pool, and
around a threading.Lock, reporting min/max iterations per thread (the same measure as
bench/pool_cycle.py's fairness). Run from the repo root: .venv/bin/python bench/gil_fairness.py
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

THREADS = 8
DURATION = 1.5
REPS = 3


def fairness(step: Callable[[], None]) -> float:
    counts = [0] * THREADS
    stop = [False]
    barrier = threading.Barrier(THREADS + 1)

    def work(i: int) -> None:
        n = 0
        barrier.wait()
        while not stop[0]:
            step()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(DURATION)
    stop[0] = True
    for t in threads:
        t.join()
    return min(counts) / max(counts)


def main() -> None:
    lock = threading.Lock()

    def locked() -> None:
        with lock:
            pass

    for label, step in (("no pool (GIL only)", lambda: None), ("threading.Lock", locked)):
        print(f"{label}: fairness {[round(fairness(step), 2) for _ in range(REPS)]}")


if __name__ == "__main__":
    main()
