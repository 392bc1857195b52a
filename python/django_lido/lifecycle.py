"""Pools across fork and interpreter exit.

After ``os.fork()`` a child must never use, close or send anything on the parent's
connections; each pool holds its locks across the fork (the binding's fork handlers) and
starts empty in the child, where it also sets aside what the parent had in use and starts
its maintenance thread again. At exit every open pool is closed, which also ends its
maintenance thread.

A process that forks is taken for a master (gunicorn ``--preload``, a pre-forking server):
it keeps no idle connections. In the parent, after each fork, the forking thread's Django
connections outside a transaction go back, every pool closes its idle connections and its
``min_size`` becomes 0, so the connections opened at import time do not sit idle in the
master for the life of the server. Such a process still gets connections on demand.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Protocol

from django_lido._lido import PoolError, _interpreter_exiting

logger = logging.getLogger("django_lido.pool")


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...
    def close(self, timeout: float = ...) -> None: ...
    def getconn(self, timeout: float | None = None) -> Any: ...
    def putconn(self, conn: Any) -> None: ...
    def resize(self, min_size: int, max_size: int) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def name(self) -> str: ...


_pools: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def register(pool: _ForkAware) -> None:
    _pools.add(pool)
    # Publishing for the host's other processes (and metrics) start with the first pool.
    from django_lido import observe

    observe.pool_created()


def _after_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


def _after_in_parent() -> None:
    with contextlib.suppress(Exception):  # os.fork() has succeeded; never fail it here
        _give_back_django_connections()
    for pool in list(_pools):
        try:
            keep_no_idle(pool)
        except Exception:
            logger.warning(
                "pool %r: closing idle connections after fork failed", pool.name, exc_info=True
            )


def _give_back_django_connections() -> None:
    """The forking thread's pooled Django connections go back to their pools, except in a
    transaction (then the code that forked still uses it). Django reconnects on demand."""
    if "django.db" not in sys.modules:
        return
    from django.conf import settings

    if not settings.configured:
        return
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        if (
            getattr(wrapper, "_lido_conn_pool", None) is not None
            and wrapper.connection is not None
            and not wrapper.in_atomic_block
        ):
            wrapper.close()


# Bounds the take of an idle connection (which may check it) in keep_no_idle.
_TAKE_IDLE = 0.5
# How long connects already under way at the fork are waited for, to close them too.
_OPENING_WAIT = 30.0


def keep_no_idle(pool: _ForkAware) -> None:
    """Closes ``pool``'s idle connections and sets its ``min_size`` to 0 (connections in use
    close as usual when they come back, after ``max_idle``). Connections being opened now
    (the maintenance filling ``min_size``) are closed once open, by a short-lived thread, so
    that the fork does not wait for them."""
    if pool.closed:
        return
    max_size = pool.stats()["pool_max"]
    _close_idle(pool, max_size)
    if pool.stats()["opening"]:
        ref = weakref.ref(pool)
        threading.Thread(
            target=_close_idle_once_opened, args=(ref, max_size), name="lido-after-fork",
            daemon=True,
        ).start()  # fmt: skip


def _close_idle(pool: _ForkAware, max_size: int) -> None:
    """A resize to ``max_size`` 1 closes every idle connection while another is in use (its
    statistics count them as closed by a resize); with none in use, this takes one first,
    and closes it itself (it is counted as returned broken)."""
    taken = None
    stats = pool.stats()
    if stats["idle"] and not stats["in_use"]:
        with contextlib.suppress(PoolError):  # others took it: they are in use now
            taken = pool.getconn(_TAKE_IDLE)
    try:
        pool.resize(0, 1)
    finally:
        pool.resize(0, max_size)
        if taken is not None:
            taken.close()  # closed, it is discarded when it goes back
            pool.putconn(taken)


def _close_idle_once_opened(ref: weakref.ref[_ForkAware], max_size: int) -> None:
    deadline = time.monotonic() + _OPENING_WAIT
    while (pool := ref()) is not None and not pool.closed and time.monotonic() < deadline:
        if not pool.stats()["opening"]:
            with contextlib.suppress(Exception):
                _close_idle(pool, max_size)
            return
        del pool
        time.sleep(0.01)


# At exit a maintenance thread still inside a connect is not waited for beyond this.
_EXIT_JOIN = 0.1


def _close_all() -> None:
    # No thread is left running Python inside a pool call when finalization starts, and
    # threads that enter one or wake from a wait from now on stay parked (see the binding's
    # exit.rs); this thread then closes the pools.
    _interpreter_exiting()
    for pool in list(_pools):
        with contextlib.suppress(Exception):  # exit must go on
            pool.close(timeout=_EXIT_JOIN)


os.register_at_fork(after_in_child=_after_in_child, after_in_parent=_after_in_parent)
atexit.register(_close_all)
