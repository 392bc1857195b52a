"""Each process's pools, published for the other processes of the host.

A process with pools writes one JSON record of all of them to ``runtime_dir()/<pid>.json``
(a temporary file renamed over the old one, so a reader never sees half a record). A daemon
thread started with the first pool builds the record every ``interval`` seconds and writes it
when something changed, or at least every ``HEARTBEAT`` seconds so readers can tell a quiet
process from a hung one. Checkouts never wait for it: it only calls the pools' read-only
methods, and those of the actions requested (below). Under gevent the thread is a real OS
thread, so its sleeps and file writes do not run on (or block) the hub.

Another process of the host asks the publishing processes to act on their pools with a
request file in the ``requests`` subdirectory (:func:`request_action`): at its next tick
each process that started before the request (and is the one named, if one is) runs the
action on its pools named in it (or all), once. An action that is a coroutine (an
``AsyncPool``'s ``drain()``) is run on the pool's own event loop, not waited for.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import os
import socket
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_lido import _green, lifecycle

logger = logging.getLogger("django_lido.observe")

RECORD_VERSION = 1
# The thread's period is kept within these bounds: often enough for a live view, rarely
# enough that an idle host costs nothing noticeable.
MIN_INTERVAL = 0.25
MAX_INTERVAL = 1.0
DEFAULT_INTERVAL = 0.5
# An unchanged record is rewritten this often; readers drop records older than STALE.
HEARTBEAT = 5.0
STALE = 30.0
# Query rows per pool in a record.
QUERIES_TOP = 50

# Connection fields that change with the clock alone: left out of the change check (a reader
# ages them by the record's age instead, see host.py). ``taken_at`` is derived from the
# monotonic clock at each call, so it jitters by microseconds.
_CLOCK_FIELDS = ("held_for", "taken_at", "transaction_for", "last_statement_seconds")


def _setting(name: str) -> Any:
    """A Django setting if Django is configured (or about to be), else None."""
    if "django.conf" not in sys.modules and "DJANGO_SETTINGS_MODULE" not in os.environ:
        return None
    try:
        from django.conf import settings

        return getattr(settings, name, None)
    except Exception:  # ImproperlyConfigured, or settings failing to import: not ours to raise
        return None


def runtime_dir(create: bool = True) -> Path:
    """Where the records live: the ``LIDO_RUNTIME_DIR`` Django setting or environment
    variable, else ``$XDG_RUNTIME_DIR/django-lido``, else ``/tmp/django-lido-<uid>``.

    With ``create``, the directory is made with mode 0700; one that exists must belong to
    this user and not be a symbolic link (records hold code paths and statement shapes)."""
    given = _setting("LIDO_RUNTIME_DIR") or os.environ.get("LIDO_RUNTIME_DIR")
    if given:
        path = Path(given)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "django-lido"
    else:
        path = Path(f"/tmp/django-lido-{os.getuid()}")
    if create:
        _make_private_dir(path)
    return path


def _make_private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None if it
    does not exist. The start time tells a process from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain anything, spaces included.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def _process_title() -> str:
    """The process title as ``ps`` shows it (gunicorn and Celery rewrite theirs)."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return " ".join(sys.argv)
    return raw.replace(b"\0", b" ").strip().decode(errors="replace")


def _targets() -> dict[int, tuple[str, str, str]]:
    """id(pool) -> (alias, vendor, database) for the pools of Django's backends."""
    registry = sys.modules.get("django_lido.backends.registry")
    if registry is None:
        return {}
    databases = _setting("DATABASES") or {}
    out: dict[int, tuple[str, str, str]] = {}
    for target, pool in list(registry._pools.values()):
        # Pools are named "alias:database" unless the settings name them; then the aliases
        # with the pool's server and database are the best guess.
        prefix = pool.name.partition(":")[0]
        if prefix in databases:
            aliases = [prefix]
        else:
            aliases = [
                alias
                for alias, s in databases.items()
                if str(s.get("NAME") or "")
                in (target.database, target.database.removeprefix("test_"))
                and str(s.get("HOST") or "") == target.host
                and str(s.get("PORT") or "") == target.port
            ]
        out[id(pool)] = (",".join(aliases), target.vendor, target.database)
    return out


def _call(pool: object, method: str, *args: Any, **kwargs: Any) -> Any:
    """A pool method that may not exist in this build (older bindings), or fail: None."""
    fn: Callable[..., Any] | None = getattr(pool, method, None)
    if fn is None:
        return None
    try:
        return fn(*args, **kwargs)
    except Exception:
        logger.debug("pool %s() failed while publishing", method, exc_info=True)
        return None


# Pools published that lifecycle.py knows only through a proxy (an AsyncPool registers its
# exit and fork handler there, not itself). Weak: publishing never keeps a pool alive.
_also_published: weakref.WeakSet[Any] = weakref.WeakSet()


def publish_pool(pool: Any) -> None:
    """Publishes ``pool`` while it is open, for a pool that does not register itself with
    lifecycle.py; call it before registering, which starts the publisher."""
    _also_published.add(pool)


def _listed(pools: weakref.WeakSet[Any]) -> list[Any]:
    while True:
        try:
            # A pool made by another thread meanwhile ends the iteration of the weak set.
            return list(pools)
        except RuntimeError:
            continue


def open_pools() -> list[Any]:
    """This process's open pools, by name for a stable order."""
    every = _listed(lifecycle._pools) + _listed(_also_published)
    pools = [p for p in every if not getattr(p, "closed", True)]
    pools.sort(key=lambda p: getattr(p, "name", ""))
    return pools


def pool_record(pool: Any, target: tuple[str, str, str] | None = None) -> dict[str, Any]:
    alias, vendor, database = target or ("", "", "")
    return {
        "name": pool.name,
        "alias": alias or None,
        "vendor": vendor or None,
        "database": database or None,
        "stats": pool.stats(),
        "connections": _call(pool, "connections") or [],
        "queries": _call(pool, "query_stats", QUERIES_TOP) or [],
        "reports": _call(pool, "reports") or [],
    }


_HOST = socket.gethostname()


def pool_records(pools: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """The records of ``pools`` (default: this process's open pools)."""
    pools = open_pools() if pools is None else list(pools)
    targets = _targets()
    return [pool_record(p, targets.get(id(p))) for p in pools]


_self_start: tuple[int, int | None, float] = (0, None, 0.0)


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _own_start() -> tuple[int | None, float]:
    """This process's start: (clock ticks since boot, epoch seconds: within a second, as the
    boot time is in whole seconds). Cached per pid, so a forked child finds its own."""
    global _self_start
    pid = os.getpid()
    if _self_start[0] != pid:
        started = proc_start(pid)
        boot = _boot_time()
        if started is not None and boot is not None:
            _self_start = (pid, started[1], boot + started[1] / os.sysconf("SC_CLK_TCK"))
        else:
            _self_start = (pid, None, time.time())
    return _self_start[1], _self_start[2]


def process_record(pools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """This process's record: its pools (records from :func:`pool_records`, by default
    of every open pool) and who it is."""
    ticks, started_at = _own_start()
    return {
        "version": RECORD_VERSION,
        "pid": os.getpid(),
        "argv0": sys.argv[0] if sys.argv else "",
        "title": _process_title(),
        "host": _HOST,
        "started_at": started_at,
        "proc_start": ticks,
        "written_at": time.time(),
        "pools": pool_records() if pools is None else pools,
    }


def _fingerprint(pools: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The pools' records less what changes with the clock alone, for ``==`` (cheaper than
    serializing them)."""
    return [
        (
            p["name"],
            p["stats"],
            [[v for k, v in c.items() if k not in _CLOCK_FIELDS] for c in p["connections"]],
            p["queries"],
            p["reports"],
        )
        for p in pools
    ]


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (mode 0600) through a temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` as ``<pid>.json`` in ``directory`` atomically."""
    final = directory / f"{record['pid']}.json"
    _write_atomically(final, json.dumps(record, separators=(",", ":"), default=str).encode())
    return final


@dataclass(frozen=True)
class Action:
    """What one process may ask the publishing processes of the host to do to their
    pools: the pool method called, and what it does (for the command's answer)."""

    method: str
    does: str


ACTIONS: dict[str, Action] = {
    "reset_queries": Action("reset_query_stats", "reset its query statistics"),
    "drain": Action("drain", "drain its pools (every connection replaced)"),
    "resize": Action("resize", "resize its pools"),
}
# Requests are files in this subdirectory of the runtime directory, one per request (so two
# made within one tick are both taken), named "<time_ns>-<pid>-<n>-<action>.json"; any
# publisher deletes those made more than REQUEST_TTL seconds ago.
REQUESTS = "requests"
REQUEST_TTL = 60.0
# A request is a few dozen bytes: a larger file is not one.
_REQUEST_MAX_BYTES = 4096
_request_numbers = iter(range(1 << 62))


def request_action(
    action: str,
    directory: Path | None = None,
    pool: str | None = None,
    *,
    pid: int | None = None,
    args: tuple[Any, ...] = (),
) -> None:
    """Asks the processes publishing to ``directory`` (process ``pid`` only, if given) to
    run ``action`` (a key of ``ACTIONS``) with ``args`` on their pools named ``pool``, or on
    all: each does at its next tick, once."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    directory = runtime_dir() if directory is None else directory
    requests = directory / REQUESTS
    requests.mkdir(mode=0o700, exist_ok=True)
    body = {"action": action, "at": time.time(), "pool": pool, "pid": pid, "args": list(args)}
    name = f"{time.time_ns()}-{os.getpid()}-{next(_request_numbers)}-{action}.json"
    _write_atomically(requests / name, json.dumps(body).encode())


def request_query_reset(directory: Path | None = None, pool: str | None = None) -> None:
    """Asks every publishing process to reset the query statistics of its pools (those
    named ``pool``, or all)."""
    request_action("reset_queries", directory, pool)


def request_drain(directory: Path | None = None, pool: str | None = None) -> None:
    """Asks every publishing process to drain its pools (those named ``pool``, or all):
    each replaces every connection of theirs (``Pool.drain()``)."""
    request_action("drain", directory, pool)


def request_resize(
    pool: str,
    min_size: int,
    max_size: int,
    directory: Path | None = None,
    pid: int | None = None,
) -> None:
    """Asks the publishing processes (process ``pid`` only, if given) to resize their pools
    named ``pool`` (``Pool.resize()``). The sizes are checked here, so a bad value is said
    to the one asking rather than logged in every process."""
    from django_lido.options import PoolOptions

    PoolOptions(min_size=min_size, max_size=max_size)
    request_action("resize", directory, pool, pid=pid, args=(min_size, max_size))


def _read_request(path: Path) -> dict[str, Any] | None:
    """A request file's fields, checked; None if it is not a small regular file (never a
    link or a FIFO, which could block the thread) or makes no sense."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, _REQUEST_MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > _REQUEST_MAX_BYTES:
            return None
        r = json.loads(data)
        pool, pid, at = r.get("pool"), r.get("pid"), float(r["at"])
        request = {
            "action": ACTIONS[r["action"]],
            "at": at,
            "pool": None if pool is None else str(pool),
            "pid": None if pid is None else int(pid),
            "args": tuple(r.get("args") or ()),
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return request if math.isfinite(at) else None


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False


def _act(pool: Any, action: Action, args: tuple[Any, ...]) -> None:
    """Runs a requested action on a pool; a failure is logged, since nobody waits for it."""
    try:
        result = getattr(pool, action.method)(*args)
        if asyncio.iscoroutine(result):
            _on_pool_loop(pool, result, action, args)
    except Exception:
        _action_failed(pool.name, action, args, sys.exc_info()[1])


def _action_failed(
    name: str, action: Action, args: tuple[Any, ...], error: BaseException | None
) -> None:
    logger.warning("pool %r: the requested %s%r failed", name, action.method, args, exc_info=error)


def _on_pool_loop(
    pool: Any, coro: Coroutine[Any, Any, Any], action: Action, args: tuple[Any, ...]
) -> None:
    """Schedules an async pool's action on the event loop the pool belongs to (its
    connections are awaited there) without waiting for it: a failure is logged when it
    ends. A pool not bound to a loop yet, or whose loop is closed, has nothing to act on."""
    loop: asyncio.AbstractEventLoop | None = getattr(pool, "_loop", None)
    try:
        if loop is None or loop.is_closed():
            raise RuntimeError("no event loop")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # closed meanwhile, too
        coro.close()
        logger.debug(
            "pool %r: the requested %s%r skipped: the pool has no open event loop",
            pool.name, action.method, args,
        )  # fmt: skip
        return
    fut.add_done_callback(functools.partial(_log_if_failed, pool.name, action, args))


def _log_if_failed(
    name: str, action: Action, args: tuple[Any, ...], fut: concurrent.futures.Future[Any]
) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        _action_failed(name, action, args, fut.exception())


def _made_at_ns(name: str) -> int | None:
    """When a request file was made, from its name (a temporary file: None)."""
    made = name.split("-", 1)[0]
    return int(made) if made.isdigit() else None


def _allocate_lock() -> Any:
    """A lock whose ``acquire(timeout=...)`` blocks the OS thread, gevent or not."""
    if _green.threading_patched():
        from gevent import monkey

        return monkey.get_original("_thread", "allocate_lock")()
    import _thread

    return _thread.allocate_lock()


class Publisher:
    """The thread that keeps this process's record up to date."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = min(max(interval, MIN_INTERVAL), MAX_INTERVAL)
        self.pid = os.getpid()
        self.writes = 0
        # CPU time the thread has used: what publishing costs the process.
        self.cpu_seconds = 0.0
        self._stop = _allocate_lock()
        self._stop.acquire()
        self._dir: Path | None = None
        self._last: list[tuple[Any, ...]] | None = None
        self._last_write = 0.0
        self.started = time.time()
        # The request files already looked at.
        self._requests_seen: set[str] = set()
        self._thread: threading.Thread | _green.RealThread | None = None

    def start(self) -> None:
        name = "lido-publish"
        if _green.threading_patched():
            self._thread = _green.real_thread(self._run, (), name)
            return
        t = threading.Thread(target=self._run, name=name, daemon=True)
        t.start()
        self._thread = t

    def stop(self, timeout: float = 1.0) -> None:
        """Ends the thread and removes this process's record."""
        with contextlib.suppress(RuntimeError):  # released already
            self._stop.release()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            if isinstance(t, threading.Thread):
                t.join(timeout)
            else:
                _join_real(t, timeout)
        self.remove()

    def remove(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                (self._dir / f"{self.pid}.json").unlink()

    def publish_once(self, force: bool = False) -> bool:
        """Builds the record and writes it if it changed (or the heartbeat is due).
        Returns whether it wrote."""
        pools = open_pools()
        if not pools:
            if self._last is not None:
                self.remove()
                self._last = None
            return False
        if self._dir is None:
            self._dir = runtime_dir()
        self._take_requests(pools)
        records = pool_records(pools)
        fingerprint = _fingerprint(records)
        now = time.monotonic()
        if not force and fingerprint == self._last and now - self._last_write < HEARTBEAT:
            return False
        write_record(self._dir, process_record(records))
        self._last, self._last_write = fingerprint, now
        self.writes += 1
        return True

    def _take_requests(self, pools: list[Any]) -> None:
        """Runs each request made since this publisher started and not yet looked at (see
        :func:`request_action`) on the pools it names, and deletes expired requests and
        writers' leftovers; one ``scandir`` of the requests directory a tick."""
        assert self._dir is not None
        directory = self._dir / REQUESTS
        try:
            names = sorted(e.name for e in os.scandir(directory))  # in the order made
        except OSError:
            return
        self._requests_seen.intersection_update(names)
        expired = time.time_ns() - int(REQUEST_TTL * 1e9)
        for name in names:
            made = _made_at_ns(name)
            if made is None or made < expired:
                if made is not None or _older_than(directory / name, REQUEST_TTL):
                    with contextlib.suppress(OSError):
                        (directory / name).unlink()
                continue
            if name in self._requests_seen:
                continue
            self._requests_seen.add(name)
            request = _read_request(directory / name)
            if request is None or request["at"] < self.started:
                continue
            if request["pid"] not in (None, self.pid):
                continue
            for pool in pools:
                if request["pool"] is None or pool.name == request["pool"]:
                    _act(pool, request["action"], request["args"])

    def _run(self) -> None:
        failures = 0
        while not self._stop.acquire(True, self.interval):
            t0 = time.thread_time()
            try:
                self.publish_once()
                failures = 0
            except Exception:
                failures += 1
                # Said once, then again only now and then: a full or unwritable directory
                # must not flood the log at every tick.
                if failures == 1 or failures % 600 == 0:
                    logger.warning("could not publish this process's pools", exc_info=True)
            self.cpu_seconds += time.thread_time() - t0


def _join_real(t: _green.RealThread, timeout: float) -> None:
    # RealThread.join() sleeps on the hub; at exit or from a real thread, poll instead.
    deadline = time.monotonic() + timeout
    sleep = _real_sleep()
    while t.is_alive() and time.monotonic() < deadline:
        sleep(0.005)


def _real_sleep() -> Callable[[float], None]:
    if _green.threading_patched():
        from gevent import monkey

        sleep: Callable[[float], None] = monkey.get_original("time", "sleep")
        return sleep
    return time.sleep


_lock = threading.Lock()
_publisher: Publisher | None = None


def flag(name: str) -> bool:
    """A yes/no switch that is on unless the Django setting or environment variable
    ``name`` says otherwise (False, "0", "false", "no", "off")."""
    value = _setting(name)
    if value is None:
        value = os.environ.get(name, "1")
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _interval() -> float:
    value = _setting("LIDO_PUBLISH_INTERVAL") or os.environ.get("LIDO_PUBLISH_INTERVAL")
    try:
        return float(value) if value is not None else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def ensure_started() -> Publisher | None:
    """Starts this process's publisher unless it runs already or publishing is off
    (``LIDO_PUBLISH = False``). Called for every new pool."""
    global _publisher
    if _publisher is not None and _publisher.pid == os.getpid():
        return _publisher
    with _lock:
        if _publisher is not None and _publisher.pid == os.getpid():
            return _publisher
        if not flag("LIDO_PUBLISH"):
            return None
        p = Publisher(_interval())
        try:
            p.start()
        except RuntimeError:  # no thread to be had: the pools work on, unpublished
            logger.warning("could not start the publishing thread", exc_info=True)
            return None
        _publisher = p
    return p


def current() -> Publisher | None:
    """The publisher of this process, if it runs."""
    p = _publisher
    return p if p is not None and p.pid == os.getpid() else None


def stop() -> None:
    """Stops publishing in this process and removes its record (``ensure_started()`` or
    the next new pool starts it again)."""
    global _publisher
    with _lock:
        p, _publisher = _publisher, None
    if p is not None and p.pid == os.getpid():
        p.stop()


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here, and the record is the parent's: start anew.
    global _publisher, _lock
    _lock = threading.Lock()
    if _publisher is not None:
        _publisher = None
        if open_pools():
            ensure_started()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(stop)
