"""Pools across fork and interpreter exit.

After ``os.fork()`` a child must never use, close or send anything on the parent's
connections; each pool holds its locks across the fork (the binding's fork handlers) and
starts empty in the child, where it also sets aside what the parent had in use and starts
its maintenance thread again. At exit every open pool is closed, which also ends its
maintenance thread.

A process that forks is taken for a master (gunicorn ``--preload``, a pre-forking server):
it keeps no idle connections. In the parent, after each fork, the forking thread's Django
connections outside a transaction go back, and every pool closes its idle connections
(and, as they arrive, those being opened to keep ``min_size``) and sets ``min_size`` to 0
(the engine's ``keep_no_idle``), so the connections opened at import time do not sit idle
in the master for the life of the server. Its ``max_size`` is left alone: such a process,
and its other threads, still get connections on demand.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import weakref
from typing import Protocol

from django_lido._lido import _interpreter_exiting

logger = logging.getLogger("django_lido.pool")


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...
    def _after_fork_in_parent(self) -> None: ...
    def close(self, timeout: float = ...) -> None: ...


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
            pool._after_fork_in_parent()
        except Exception:
            logger.warning("%r: closing idle connections after fork failed", pool, exc_info=True)


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


# At exit maintenance threads are not waited for: woken by the close, or back from a
# connect, they park for good (the binding's exit.rs) instead of taking the GIL back.
_EXIT_JOIN = 0.0


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
