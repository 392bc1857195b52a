"""What the engine needs from gevent: how the process is patched, and a greenlet's wait.

The binding (crates/lido-python/src/green.rs) asks :func:`mode` once per pool, at its first
checkout. Under gevent a checkout that has to queue waits on a :class:`GreenWake`: the
engine wakes it from any OS thread, and the waiting greenlet switches to the hub meanwhile,
so the other greenlets keep running.
"""

from __future__ import annotations

import sys
import warnings
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


class BlockingDriverWarning(RuntimeWarning):
    """A pool's driver blocks the whole process under gevent: while one greenlet waits on
    the database, no other greenlet runs."""


def check_driver(driver: str) -> None:
    """Under gevent, warns (once per pool: called when the pool learns its driver) that
    ``driver`` blocks the hub. It still works, one query at a time per process, so this
    is a warning and not an error; ``warnings.filterwarnings("error",
    category=BlockingDriverWarning)`` makes it one."""
    if not _gevent_patched():
        return
    if driver == "mysqlclient":
        advice = (
            "mysqlclient is a C driver that gevent cannot make cooperative: under gevent "
            "each query blocks every greenlet of the process. Use PyMySQL "
            "(pymysql.install_as_MySQLdb() before Django loads), or a thread-based "
            "worker (gunicorn -k gthread, celery -P threads)"
        )
    elif driver == "psycopg2" and not _psycopg2_is_green():
        advice = (
            "psycopg2 without a wait callback blocks every greenlet of the process while "
            "it waits on the server. Call psycogreen.gevent.patch_psycopg() after "
            "gevent's patch_all() (for gunicorn: in a post_fork hook or the WSGI module), "
            "or use psycopg 3, which is gevent-aware"
        )
    else:
        return
    warnings.warn(advice, BlockingDriverWarning, stacklevel=2)


def _psycopg2_is_green() -> bool:
    import psycopg2.extensions

    return psycopg2.extensions.get_wait_callback() is not None


class GreenWake:
    """One queued checkout of a greenlet: ``send()`` (from the engine, on any OS thread)
    sets the event in the hub's thread; ``wait()`` switches to the hub until then.

    Most wakes come from another greenlet of the same OS thread returning a connection:
    those set the event at once (no system call, no loop wake-up). A wake from another OS
    thread (the maintenance thread granting a new connection) goes through the loop's
    thread-safe callback queue, which wakes the hub."""

    __slots__ = ("_event", "_loop", "_thread")

    def __init__(self) -> None:
        hub, event, _ = _gevent_parts()
        self._event: Any = event()
        self._loop: Any = hub().loop
        self._thread = _real_ident()

    def send(self) -> None:
        if _real_ident() == self._thread:
            self._event.set()
        else:
            self._loop.run_callback_threadsafe(self._event.set)

    def wait(self, seconds: float) -> bool:
        """Waits until sent or ``seconds`` passed; whether sent. Ready for the next wait."""
        sent = bool(self._event.wait(seconds))
        self._event.clear()
        return sent


_parts: tuple[Any, Any, Any] | None = None


def _gevent_parts() -> tuple[Any, Any, Any]:
    """``(get_hub, Event, the real get_ident)``, imported once (a wait is a hot path)."""
    global _parts
    if _parts is None:
        from gevent import get_hub, monkey
        from gevent.event import Event

        _parts = (get_hub, Event, monkey.get_original("_thread", "get_ident"))
    return _parts


def _real_ident() -> int:
    """The OS thread's id (``threading.get_ident`` tells greenlets apart when patched)."""
    return int(_gevent_parts()[2]())


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
