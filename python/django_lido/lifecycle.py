"""Pools across fork and interpreter exit.

After ``os.fork()`` a child must never use, close or send anything on the parent's
connections; each pool holds its locks across the fork (the binding's fork handlers) and
starts empty in the child, where it also sets aside what the parent had in use and starts
its maintenance thread again. At exit every open pool is closed, which also ends its
maintenance thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Protocol

from django_lido._lido import _interpreter_exiting


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...
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


os.register_at_fork(after_in_child=_after_in_child)
atexit.register(_close_all)
