"""``close_connection`` gives back what code outside a request took, on every alias."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django_helpers import configure, database, global_alias, unique
from django_lido import PoolTimeout, close_connection

WORKERS = 12  # threads of the executor, each keeps its Django connections between tasks
MAX_SIZE = 4


@pytest.fixture
def aliases(pg: Any) -> Iterator[tuple[str, str]]:
    configure(pg, default=database(pg))
    names = unique("cc_a"), unique("cc_b")
    for alias in names:
        global_alias(alias, database(pg, pool={"max_size": MAX_SIZE, "timeout": 1}))
    yield names
    from django.db import connections

    for alias in names:
        connections[alias].close()


def _pool(alias: str) -> Any:
    from django.db import connections

    return connections[alias].pool


def _query(*aliases: str) -> int:
    from django.db import connections

    total = 0
    for alias in aliases:
        with connections[alias].cursor() as cur:
            cur.execute("SELECT 1")
            total += cur.fetchone()[0]
    return total


def _all_workers(barrier: threading.Barrier, work: Callable[[], int]) -> Callable[[int], int]:
    """A task that first waits until every worker runs one, so that the executor really has
    WORKERS threads at once."""

    def task(i: int) -> int:
        if i < WORKERS:
            barrier.wait(timeout=30)
        return work()

    return task


def test_executor_tasks_give_their_connections_back(aliases: tuple[str, str]) -> None:
    work = close_connection(lambda: _query(*aliases))
    task = _all_workers(threading.Barrier(WORKERS), work)
    with ThreadPoolExecutor(WORKERS) as ex:
        assert list(ex.map(task, range(WORKERS * 5))) == [len(aliases)] * WORKERS * 5
    for alias in aliases:
        stats = _pool(alias).stats()
        assert stats["in_use"] == 0
        assert stats["pool_size"] <= MAX_SIZE


def test_without_it_the_executor_starves(aliases: tuple[str, str]) -> None:
    """What the helper is for: the workers keep their connections, later tasks time out."""
    task = _all_workers(threading.Barrier(WORKERS), lambda: _query(aliases[0]))
    with ThreadPoolExecutor(WORKERS) as ex:
        errors = [f.exception(timeout=30) for f in [ex.submit(task, i) for i in range(WORKERS)]]
        # Django wraps the driver-compatible PoolTimeout in its own OperationalError.
        timeouts = [e for e in errors if isinstance(getattr(e, "__cause__", None), PoolTimeout)]
        assert len(timeouts) == WORKERS - MAX_SIZE, errors
        # Tidy up: every worker gives back what it kept.
        tidy = _all_workers(threading.Barrier(WORKERS), close_connection(lambda: 0))
        list(ex.map(tidy, range(WORKERS)))
    assert _pool(aliases[0]).stats()["in_use"] == 0


def test_context_manager_gives_back_also_when_the_body_raises(aliases: tuple[str, str]) -> None:
    def work() -> None:
        with close_connection():
            _query(*aliases)
            raise ValueError("boom")

    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="boom"):
        ex.submit(work).result(timeout=30)
    for alias in aliases:
        assert _pool(alias).stats()["in_use"] == 0


def test_coroutine_functions_are_refused() -> None:
    async def work() -> None:
        pass

    with pytest.raises(TypeError, match="synchronous"):
        close_connection(work)
