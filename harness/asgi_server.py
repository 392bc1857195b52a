"""A tiny Django project served by a real ASGI server, and bounded HTTP load against it.

``write_project(root, database=...)`` writes a project into ``root``: a model table it
creates itself, async views that use the async ORM (``aget``, ``acount``, ``async for``),
sync views that use the ORM, slow ones (``/slow_async``, ``/slow_sync``: a query, then a
sleep), and ``/stats`` (the pool's statistics as JSON).
``UvicornServer(root)`` or ``DaphneServer(root)`` serves it on a free port (``start()``
waits until it answers, ``stop()`` ends the whole process group); ``drive(port, paths,
...)`` sends a bounded number of requests from a bounded number of client threads and
counts what came back.

Used by ``tests/test_django_asgi.py`` and ``bench/asgi_requests.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.process import ServedProcess
from harness.servers import free_port

_SETTINGS = """\
SECRET_KEY = "asgi-harness"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "asgiproj.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "asgiapp"]
MIDDLEWARE = []
USE_TZ = True
DATABASES = {{"default": {database!r}}}
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"err": {{"class": "logging.StreamHandler"}}}},
    "loggers": {{"django.request": {{"handlers": ["err"], "level": "ERROR"}}}},
}}
"""

_ASGI = """\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asgiproj.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
"""

_MODELS = """\
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "asgiapp"
        db_table = "asgi_harness_item"
"""

_VIEWS = """\
import asyncio
import time

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import JsonResponse

from asgiapp.models import Item


async def async_orm(request):
    n = await Item.objects.acount()
    first = await Item.objects.aget(pk=1)
    names = [i.name async for i in Item.objects.order_by("pk")[:5]]
    return JsonResponse({"n": n, "first": first.name, "names": names})


async def async_hops(request):
    # async_orm's three trips to Django's sync thread, without the database: what any pool
    # can reach at most under this server.
    for _ in range(3):
        await sync_to_async(_nothing)()
    return JsonResponse({"ok": True})


def _nothing():
    return None


def sync_orm(request):
    n = Item.objects.count()
    first = Item.objects.get(pk=1)
    names = [i.name for i in Item.objects.order_by("pk")[:5]]
    return JsonResponse({"n": n, "first": first.name, "names": names})


async def slow_async(request):
    # Holds the request's connection (CONN_MAX_AGE > 0) while it sleeps: a client that
    # hangs up meanwhile gets the view cancelled.
    await Item.objects.aget(pk=1)
    await asyncio.sleep(float(request.GET.get("s", "0.5")))
    return JsonResponse({"ok": True})


def slow_sync(request):
    Item.objects.get(pk=1)
    time.sleep(float(request.GET.get("s", "0.5")))
    return JsonResponse({"ok": True})


def stats(request):
    pool = connections["default"].pool
    out = dict(pool.stats()) if pool is not None and hasattr(pool, "stats") else {}
    return JsonResponse({k: v for k, v in out.items() if isinstance(v, (int, float, str))})
"""

_URLS = """\
from django.urls import path

from asgiapp import views

urlpatterns = [
    path("async_orm", views.async_orm),
    path("async_hops", views.async_hops),
    path("sync_orm", views.sync_orm),
    path("slow_async", views.slow_async),
    path("slow_sync", views.slow_sync),
    path("stats", views.stats),
]
"""

TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS asgi_harness_item (id serial PRIMARY KEY, name varchar(50));"
    "INSERT INTO asgi_harness_item (name) SELECT 'item ' || g FROM generate_series(1, 10) g"
    " WHERE NOT EXISTS (SELECT 1 FROM asgi_harness_item)"
)


def write_project(root: Path, *, database: dict[str, Any]) -> Path:
    """Writes the project (packages ``asgiproj`` and ``asgiapp``) into ``root``. The table
    must exist: run ``TABLE_SQL`` on the database first."""
    files = {
        "asgiproj/__init__.py": "",
        "asgiproj/settings.py": _SETTINGS.format(database=database),
        "asgiproj/asgi.py": _ASGI,
        "asgiproj/urls.py": _URLS,
        "asgiapp/__init__.py": "",
        "asgiapp/models.py": _MODELS,
        "asgiapp/views.py": _VIEWS,
    }
    return write_files(root, files)


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Writes each ``{relative path: text}`` under ``root``, making folders as needed."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class AsgiServer(ServedProcess):
    """An ASGI server (``python -m MODULE``) serving ``asgiproj.asgi:application`` of a
    project made by ``write_project``, on a free port, in a process group of its own.
    Subclasses give the module and its options; everything else is shared."""

    module: str  # what ``python -m`` runs
    ready_path = "/stats"  # answers 200 once the server is up

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        pythonpath: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.python = python
        self.port = free_port()
        self.what = self.module
        paths = [str(root), *(pythonpath or [])]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "DJANGO_SETTINGS_MODULE": "asgiproj.settings",
            **(env or {}),
        }
        super().__init__(root / f"{self.module}.log", root, env)

    def options(self) -> list[str]:
        """The server's command-line arguments after ``python -m MODULE``."""
        raise NotImplementedError

    def command(self) -> list[str]:
        return [self.python, "-m", self.module, *self.options()]

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return get(self.port, self.ready_path, timeout=2)[0] == 200
        return False


class UvicornServer(AsgiServer):
    """``uvicorn`` with ``workers`` worker processes."""

    module = "uvicorn"

    def __init__(self, root: Path, *, workers: int = 1, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.workers = workers

    def options(self) -> list[str]:
        return ["asgiproj.asgi:application", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--log-level", "warning",
                "--no-access-log"]  # fmt: skip


class DaphneServer(AsgiServer):
    """``daphne`` (Django Channels' server): one process, no workers option."""

    module = "daphne"

    def options(self) -> list[str]:
        # Verbosity 0: warnings only, no access log.
        return ["--bind", "127.0.0.1", "--port", str(self.port), "--verbosity", "0",
                "asgiproj.asgi:application"]  # fmt: skip


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def hang_up(port: int, path: str, after: float) -> None:
    """Sends a GET and closes the connection ``after`` seconds, before the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        time.sleep(after)


def stats(port: int) -> dict[str, Any]:
    status, body = get(port, "/stats")
    if status != 200:
        raise RuntimeError(f"/stats answered {status}: {body[:200]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


@dataclass
class Load:
    """What ``drive`` saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)  # other failures (first few)
    other_errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    finished: bool = True  # False: the watchdog's deadline passed first

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

    def summary(self) -> str:
        five = sum(n for s, n in self.statuses.items() if s >= 500)
        return (
            f"{self.ok}/{self.sent} OK, {five} 5xx, {self.timeouts} timeouts, "
            f"{self.other_errors} other errors, {self.rps:.0f} req/s, "
            f"p50 {self.percentile(50) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms"
            + ("" if self.finished else ", WATCHDOG: not finished")
        )


def drive(
    port: int,
    paths: list[str],
    *,
    requests: int,
    concurrency: int,
    request_timeout: float = 10.0,
    deadline: float = 60.0,
) -> Load:
    """Sends ``requests`` GETs (cycling through ``paths``) from ``concurrency`` client
    threads, each on its own keep-alive connection. Never runs past ``deadline`` seconds:
    the client threads are daemons, and the result says whether they all finished."""
    load = Load()
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + deadline

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
                if i is None:
                    break
                load.sent += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=request_timeout)
            c = conn
            t0 = time.monotonic()
            try:
                conn.request("GET", paths[i % len(paths)])
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                with lock:
                    load.timeouts += 1
                c.close()
                conn = None
                continue
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    load.other_errors += 1
                    if len(load.errors) < 5:
                        load.errors.append(repr(exc))
                c.close()
                conn = None
                continue
            with lock:
                load.statuses[status] += 1
                load.latencies.append(time.monotonic() - t0)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at - time.monotonic()) + request_timeout)
    load.elapsed = time.monotonic() - t0
    load.finished = not any(t.is_alive() for t in threads)
    return load


def drive_processes(
    port: int,
    paths: list[str],
    *,
    requests: int,
    concurrency: int,
    processes: int,
    request_timeout: float = 10.0,
    deadline: float = 60.0,
) -> Load:
    """``drive`` split over ``processes`` client processes (each ``concurrency / processes``
    threads, its share of ``requests``), so that the clients' own GIL does not cap the load;
    the results merged into one ``Load``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [
            ex.submit(
                drive,
                port,
                paths,
                requests=requests * n // concurrency,
                concurrency=n,
                request_timeout=request_timeout,
                deadline=deadline,
            )
            for n in shares
            if n
        ]
        parts = [f.result(timeout=deadline + request_timeout + 60) for f in futures]
    load = Load()
    for part in parts:
        load.sent += part.sent
        load.statuses.update(part.statuses)
        load.timeouts += part.timeouts
        load.other_errors += part.other_errors
        load.errors.extend(part.errors[: 5 - len(load.errors)])
        load.latencies.extend(part.latencies)
        load.elapsed = max(load.elapsed, part.elapsed)
        load.finished = load.finished and part.finished
    return load


class ServerConnections:
    """Samples, in a thread, how many server connections ``application_name`` has
    (``pg_stat_activity``); ``peak`` is the most seen, ``samples`` every
    ``(time.monotonic(), count)`` read."""

    def __init__(self, pg: Any, application_name: str, interval: float = 0.05) -> None:
        self.pg, self.app, self.interval = pg, application_name, interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        rows = self.pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self.app,)
        )
        return int(rows[0][0])

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.pg.conninfo(), autocommit=True) as conn:
            while not self._stop.is_set():
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (self.app,),
                ).fetchone()
                count = int(n[0]) if n else 0
                self.samples.append((time.monotonic(), count))
                self.peak = max(self.peak, count)
                self._stop.wait(self.interval)

    def __enter__(self) -> ServerConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
