"""A tiny Django project served by a real ``gunicorn`` (sync, gthread or gevent workers,
``--preload`` or not), for tests and benchmarks.

``write_project(root, databases=..., ...)`` writes the project into ``root``: its settings
read ``DATABASES`` from a JSON file, so one project serves any backend (ours, Django's stock
one with or without its pool, django-db-geventpool). Views:

- ``/orm``: a few ORM queries (a count, a get, a slice of five rows);
- ``/slow``: the same inside a transaction that also sleeps 5 ms on the server;
- ``/stats``: the answering worker's pid and its django_lido pool statistics.

``gunicorn.conf.py`` (also written) makes each worker write ``stats-<pid>.json`` when it
exits (its pools' statistics, read by ``GunicornServer.process_stats()``); with
``psycogreen=True`` each worker makes psycopg2 cooperative after gevent patched it.
With ``query_at_import=True`` the WSGI module runs one query when it is imported, as an
application that touches the database at start-up; under ``--preload`` that is the master,
which writes the server pid of that connection to ``import-<pid>.json``.

Load and server-connection sampling: ``harness.asgi_server.drive`` and
``harness.asgi_server.ServerConnections`` work for any HTTP server.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Self

from harness.asgi_server import get
from harness.process import ServedProcess
from harness.servers import free_port

TABLE = "wsgi_harness_item"
TABLE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id serial PRIMARY KEY, name varchar(50));"
    f"INSERT INTO {TABLE} (name) SELECT 'item ' || g FROM generate_series(1, 100) g"
    f" WHERE NOT EXISTS (SELECT 1 FROM {TABLE})"
)

_SETTINGS = """\
import json
import os
import sys

_CONFIG = json.loads(open(os.environ["LIDO_WSGI_CONFIG"]).read())
if _CONFIG["hide_psycopg"]:
    sys.modules["psycopg"] = None  # Django's PostgreSQL backend then takes psycopg2
SECRET_KEY = "wsgi-harness"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "wsgiproj.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "wsgiapp"]
MIDDLEWARE = []
USE_TZ = True
DATABASES = _CONFIG["DATABASES"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"err": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["err"], "level": "ERROR"}},
}
"""

_WSGI = """\
import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wsgiproj.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

from django.conf import settings  # noqa: E402

if settings._CONFIG["query_at_import"]:
    from pathlib import Path

    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (backend,) = cur.fetchone()
    out = Path(os.environ["LIDO_WSGI_CONFIG"]).parent / f"import-{os.getpid()}.json"
    out.write_text(json.dumps({"pid": os.getpid(), "backend": backend}))
"""

_GUNICORN_CONF = """\
import json
import os
from pathlib import Path

_CONFIG = json.loads(open(os.environ["LIDO_WSGI_CONFIG"]).read())
_DIR = Path(os.environ["LIDO_WSGI_CONFIG"]).parent


def post_fork(server, worker):
    if _CONFIG["psycogreen"]:
        # The wait callback uses gevent's own sockets: it can be set before the worker
        # patches the process, and is in place before the application connects.
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def worker_exit(server, worker):
    pools = []
    try:
        from django_lido.backends import registry
    except ImportError:
        pass
    else:
        pools = [pool.stats() for _, pool in list(registry._pools.values())]
    out = _DIR / f"stats-{os.getpid()}.json"
    out.write_text(json.dumps({"pid": os.getpid(), "pools": pools}, default=str))
"""

_MODELS = f"""\
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "wsgiapp"
        db_table = "{TABLE}"
"""

_VIEWS = """\
import os

from django.db import connection, connections, transaction
from django.http import JsonResponse

from wsgiapp.models import Item


def _queries():
    n = Item.objects.count()
    first = Item.objects.get(pk=1)
    names = [i.name for i in Item.objects.order_by("pk")[:5]]
    return {"n": n, "first": first.name, "names": names}


def orm(request):
    return JsonResponse(_queries())


def slow(request):
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.005)")
        return JsonResponse(_queries())


def stats(request):
    pool = getattr(connections["default"], "pool", None)
    out = dict(pool.stats()) if pool is not None and hasattr(pool, "stats") else {}
    out = {k: v for k, v in out.items() if isinstance(v, (int, float, str))}
    return JsonResponse({"pid": os.getpid(), **out})
"""

_URLS = """\
from django.urls import path

from wsgiapp import views

urlpatterns = [
    path("orm", views.orm),
    path("slow", views.slow),
    path("stats", views.stats),
]
"""


def write_project(
    root: Path,
    *,
    databases: dict[str, Any],
    psycogreen: bool = False,
    hide_psycopg: bool = False,
    query_at_import: bool = False,
) -> Path:
    """Writes the project (``wsgiproj``, ``wsgiapp``, ``gunicorn.conf.py`` and the config
    file) into ``root``; returns the config file's path. ``hide_psycopg``: Django's
    PostgreSQL backends use psycopg2. The table must exist: run ``TABLE_SQL`` first."""
    files = {
        "wsgiproj/__init__.py": "",
        "wsgiproj/settings.py": _SETTINGS,
        "wsgiproj/wsgi.py": _WSGI,
        "wsgiproj/urls.py": _URLS,
        "wsgiapp/__init__.py": "",
        "wsgiapp/models.py": _MODELS,
        "wsgiapp/views.py": _VIEWS,
        "gunicorn.conf.py": _GUNICORN_CONF,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = root / "config.json"
    config.write_text(
        json.dumps(
            {
                "DATABASES": databases,
                "psycogreen": psycogreen,
                "hide_psycopg": hide_psycopg,
                "query_at_import": query_at_import,
            }
        )
    )
    return config


class GunicornServer(ServedProcess):
    """``gunicorn wsgiproj.wsgi`` for a project made by ``write_project``: ``start()``
    returns once it answers; ``stop()`` asks the master for a graceful shutdown (SIGTERM),
    bounded, and returns its exit code (None if it had to be killed)."""

    what = "gunicorn"

    def __init__(
        self,
        root: Path,
        *,
        worker_class: str = "sync",
        workers: int = 1,
        threads: int = 1,
        worker_connections: int = 1000,
        preload: bool = False,
        python: str = sys.executable,
        pythonpath: list[str] | None = None,
        timeout: int = 30,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.argv = [
            python, "-m", "gunicorn", "-c", str(root / "gunicorn.conf.py"),
            "--chdir", str(root), "--bind", f"127.0.0.1:{self.port}",
            "--worker-class", worker_class, "--workers", str(workers),
            "--threads", str(threads), "--worker-connections", str(worker_connections),
            "--timeout", str(timeout), "--graceful-timeout", "10",
            "--log-level", "warning", *(["--preload"] if preload else []), "wsgiproj.wsgi",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), *(pythonpath or [])]),
            "LIDO_WSGI_CONFIG": str(root / "config.json"),
        }
        super().__init__(root / "gunicorn.log", root, env)

    def command(self) -> list[str]:
        return self.argv

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return get(self.port, "/stats", timeout=2)[0] == 200
        return False

    def start(self, timeout: float = 30.0) -> Self:
        for old in [*self.root.glob("stats-*.json"), *self.root.glob("import-*.json")]:
            old.unlink()
        return super().start(timeout)

    def worker_pids(self) -> list[int]:
        """The master's children (the workers) now."""
        if self.proc is None:
            return []
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            return [int(p) for p in text.split()]
        return []

    def process_stats(self) -> list[dict[str, Any]]:
        """What each exited worker wrote: ``{"pid", "pools": [stats, ...]}``."""
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("stats-*.json"))]

    def import_queries(self) -> list[dict[str, Any]]:
        """``{"pid", "backend"}`` of each process that ran the import-time query."""
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("import-*.json"))]
