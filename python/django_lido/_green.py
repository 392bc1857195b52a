"""What the engine needs from gevent: how the process is patched, and a greenlet's wait.

The binding (crates/lido-python/src/green.rs) asks :func:`mode` once per pool, at its first
checkout. Under gevent a checkout that has to queue waits on a :class:`GreenWake`: the
engine wakes it from any OS thread through the hub's thread-safe async watcher, and the
waiting greenlet switches to the hub meanwhile, so the other greenlets keep running.
"""

from __future__ import annotations

import sys
from typing import Any

# What mode() answers.
THREADS = 0
GEVENT = 1


def _gevent_patched() -> bool:
    """Whether greenlets may call the pool: ``threading`` patched, or only ``socket`` (then
    greenlets do I/O on the hub while threads are real, and parking one would stop them)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading") or monkey.is_module_patched("socket"))


def eventlet_patched() -> bool:
    if "eventlet" not in sys.modules:
        return False
    try:
        from eventlet import patcher

        return bool(patcher.is_monkey_patched("thread"))
    except Exception:
        return False


def threading_patched() -> bool:
    """Whether ``threading.Thread`` makes greenlets (gevent's ``patch_all()``)."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def mode() -> int:
    """How checkouts wait in this process; raises if the pool cannot serve it."""
    if _gevent_patched():
        return GEVENT
    if eventlet_patched():
        raise RuntimeError(
            "django-lido does not support eventlet: its monkey-patched threads are green "
            "threads that a checkout would block. Run under gevent (gunicorn -k gevent, "
            "celery -P gevent) or with real threads (gunicorn -k gthread, celery -P threads)"
        )
    return THREADS


class GreenWake:
    """One queued checkout of a greenlet: ``send()`` (thread-safe, from the engine) sets the
    event in the hub's thread; ``wait()`` switches to the hub until then."""

    __slots__ = ("_event", "_watcher")

    def __init__(self) -> None:
        from gevent import get_hub
        from gevent.event import Event

        self._event = Event()
        # Started at once: a send() from then on is never lost.
        self._watcher: Any = get_hub().loop.async_()
        self._watcher.start(self._event.set)

    def send(self) -> None:
        self._watcher.send()

    def wait(self, seconds: float) -> bool:
        return bool(self._event.wait(seconds))

    def clear(self) -> None:
        self._event.clear()

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()


def real_thread(target: Any, args: tuple[Any, ...], name: str) -> RealThread:
    return RealThread(target, args, name)


class RealThread:
    """An OS thread in a gevent-patched process (``threading.Thread`` would be a greenlet),
    with a ``join`` that does not block the hub."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        from gevent import monkey

        start = monkey.get_original("_thread", "start_new_thread")
        self._get_ident = monkey.get_original("_thread", "get_ident")
        lock = monkey.get_original("_thread", "allocate_lock")()
        lock.acquire()
        self._done = lock
        self.name = name
        self.ident: int | None = None

        def run() -> None:
            self.ident = self._get_ident()
            try:
                target(*args)
            finally:
                lock.release()

        start(run, ())

    def is_current(self) -> bool:
        return bool(self._get_ident() == self.ident)

    def is_alive(self) -> bool:
        if self._done.acquire(False):
            self._done.release()
            return False
        return True

    def join(self, timeout: float | None = None) -> None:
        import time

        import gevent

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return
            gevent.sleep(0.005)
