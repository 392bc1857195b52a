"""A thread's pooled connections go back to the pool as soon as the thread ends.

Django keeps each thread's ``DatabaseWrapper`` in a thread-local (``connections``). A thread
that ends without ``close_old_connections()`` (a thread of the application's, a
``runserver`` request thread with ``CONN_MAX_AGE`` > 0, the sync thread of an ASGI request)
drops its wrappers, but a wrapper sits in reference cycles (its ``ops``, ``features``,
``creation``... refer back to it), so the connection it holds would be freed only at the
next garbage collection, which may be long coming.

Each thread that makes a pooled wrapper gets one ``_ThreadEnd`` in a ``threading.local``.
CPython clears a thread's locals when the thread ends, in that thread, before ``join()``
returns; the ``_ThreadEnd`` is freed then, whatever cycles its wrappers are in, and gives
back what they still hold (freed anywhere else, it does nothing). It refers to the
wrappers weakly: a wrapper collected earlier gave its connection up already (the pool's
leak watch).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Protocol


class Reclaims(Protocol):
    def _lido_thread_ended(self) -> None:
        """Gives back the connection this wrapper holds, if the thread that ended was the
        only one using it."""


class _ThreadEnd:
    """Lives in one thread's slot of ``_local``; freed when that thread ends."""

    __slots__ = ("pid", "thread", "wrappers")

    def __init__(self) -> None:
        self.wrappers: weakref.WeakSet[Reclaims] = weakref.WeakSet()
        self.pid = os.getpid()
        self.thread = threading.get_ident()

    def __del__(self) -> None:
        # Only in the thread itself as it ends. Not at exit; nor in the child of a fork,
        # where CPython frees the other threads' locals (in the forking thread, before the
        # pools' fork hooks run): their connections are the parent's.
        if sys.is_finalizing() or threading.get_ident() != self.thread or os.getpid() != self.pid:
            return
        failed: BaseException | None = None
        for wrapper in list(self.wrappers):
            try:
                wrapper._lido_thread_ended()
            except Exception as exc:  # the others still go back; the first is reported
                failed = failed or exc
        if failed is not None:
            raise failed  # printed as unraisable, as any error in __del__


_local = threading.local()


def watch(wrapper: Reclaims) -> None:
    """Gives back ``wrapper``'s connection when the current thread ends (not the main
    thread's: it ends with the process). Called once per wrapper, when it is made."""
    if threading.get_ident() == threading.main_thread().ident:
        return
    try:
        end = _local.end
    except AttributeError:
        end = _local.end = _ThreadEnd()
    end.wrappers.add(wrapper)
