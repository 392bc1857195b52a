"""Pools across fork and interpreter exit.

After ``os.fork()`` a child must never use, close or send anything on the parent's
connections; each pool holds its locks across the fork and starts empty in the child.
At exit every open pool is closed, which also ends its maintenance thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from typing import Protocol

from django_lido._lido import _interpreter_exiting


class _ForkAware(Protocol):
    def _before_fork(self) -> None: ...
    def _after_fork_in_parent(self) -> None: ...
    def _after_fork_in_child(self) -> None: ...
    def close(self, timeout: float = ...) -> None: ...


_pools: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
# The pools whose locks are held across the fork in progress.
_forking: list[_ForkAware] = []


def register(pool: _ForkAware) -> None:
    _pools.add(pool)


def _before_fork() -> None:
    _forking[:] = list(_pools)
    for pool in _forking:
        pool._before_fork()


def _after_in_parent() -> None:
    for pool in _forking:
        pool._after_fork_in_parent()
    _forking.clear()


def _after_in_child() -> None:
    for pool in _forking:
        pool._after_fork_in_child()
    _forking.clear()


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


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
atexit.register(_close_all)
