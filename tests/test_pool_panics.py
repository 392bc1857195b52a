"""A panic anywhere in the binding is a normal Python exception that names it a bug, and
gives back every slot it touched (issue 15, point 4), against a real PostgreSQL.

Panics are forced without a hook in the hot path: ``_panic_for_test`` panics inside the
guard every method runs in, and a Python callback that raises PyO3's ``PanicException``
makes PyO3 resume the panic in the binding's frame that called it (at checkout, return,
open or close), as a panic of the binding itself would unwind.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django_lido import Pool, PoolError, PoolInternalError
from helpers import app_name, connector


def panic_type(pool: Pool) -> type[BaseException]:
    """PyO3's ``PanicException``: the cause of the error a forced panic raises."""
    with pytest.raises(PoolInternalError) as info:
        pool._panic_for_test("to learn the type")
    cause = info.value.__cause__
    assert cause is not None and not isinstance(cause, Exception)
    return type(cause)


def assert_consistent(pool: Pool, size: int) -> None:
    s = pool.stats()
    assert (s["in_use"], s["opening"], s["pool_size"]) == (0, 0, size), s
    assert s["pool_size"] == s["idle"]
    conn = pool.getconn(timeout=2)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.putconn(conn)


@pytest.fixture
def connect(pg: Any) -> Any:
    return connector(pg, app_name())


@pytest.fixture
def pool(connect: Any) -> Any:
    p = Pool(connect, max_size=2, timeout=2)
    yield p
    p.close()


def test_a_panic_is_a_pool_error_that_names_the_bug(pool: Pool) -> None:
    with pytest.raises(PoolInternalError) as info:
        pool._panic_for_test("boom")
    assert isinstance(info.value, PoolError) and isinstance(info.value, Exception)
    message = str(info.value)
    assert "bug in django-lido" in message
    assert "PoolCore._panic_for_test panicked (boom)" in message
    assert_consistent(pool, 0)


def test_a_panic_at_checkout_gives_the_slot_back(pool: Pool, connect: Any) -> None:
    panic = panic_type(pool)
    fired: list[int] = []

    def check(conn: Any) -> None:  # runs at checkout (check_after_idle=0)
        if not fired:
            fired.append(1)
            raise panic("in the check")

    pool2 = Pool(connect, max_size=1, timeout=1, check_after_idle=0, check=check)
    try:
        pool2.putconn(pool2.getconn())  # opened: no check
        with pytest.raises(
            PoolInternalError, match=re.escape("PoolCore.getconn panicked (in the check)")
        ):
            pool2.getconn()
        # The connection being checked is gone (counted lost); its slot is free.
        assert pool2.stats()["connections_lost"] == 1
        assert_consistent(pool2, 0)
    finally:
        pool2.close()


def test_a_panic_at_return_gives_the_slot_back(pool: Pool, connect: Any) -> None:
    panic = panic_type(pool)
    pool2 = Pool(connect, max_size=1, timeout=1, reset=lambda c: raise_(panic("in reset")))
    try:
        conn = pool2.getconn()
        with pytest.raises(
            PoolInternalError, match=re.escape("PoolCore.putconn panicked (in reset)")
        ):
            pool2.putconn(conn)
        conn.close()
        s = pool2.stats()
        assert (s["in_use"], s["pool_size"]) == (0, 0), s
        # A following checkout works (it opens a new connection, then the reset panics again
        # at its return, which frees that slot too).
        conn = pool2.getconn(timeout=1)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(PoolInternalError):
            pool2.putconn(conn)
        assert pool2.stats()["in_use"] == 0
    finally:
        pool2.close()


def test_a_panic_while_opening_or_closing_gives_the_slot_back(pool: Pool, connect: Any) -> None:
    panic = panic_type(pool)
    opens: list[int] = []

    def flaky_connect() -> Any:
        opens.append(1)
        if len(opens) == 1:
            raise panic("in connect")
        return connect()

    pool2 = Pool(flaky_connect, max_size=1, timeout=1)
    try:
        with pytest.raises(PoolInternalError, match="in connect"):
            pool2.getconn()
        assert_consistent(pool2, 0)
        # Closing the pool: the driver's close panics; the slot is freed anyway.
        conn = pool2.getconn()
        conn.close = lambda: raise_(panic("in close"))  # type: ignore[method-assign]
        pool2.putconn(conn)
        with pytest.raises(
            PoolInternalError, match=re.escape("PoolCore.close panicked (in close)")
        ):
            pool2.close()
        s = pool2.stats()
        assert (s["in_use"], s["idle"], s["pool_size"]) == (0, 0, 0), s
    finally:
        pool2.close()


def raise_(exc: BaseException) -> None:
    raise exc
