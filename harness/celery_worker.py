"""A tiny Django project with a Celery app, written into a temp dir, and a real ``celery
worker`` subprocess running it, for tests and benchmarks.

The project (package ``celeryproj``) reads its ``DATABASES`` and broker URLs from a JSON file
named by ``$LIDO_CELERY_CONFIG``. Its tasks:

- ``celeryproj.tasks.query(n)``: one ORM query and one cursor query; returns
  ``[worker pid, server backend pid]``.

Each worker process, when it exits (``worker_process_shutdown`` in a prefork child,
``worker_shutdown`` in the main process), writes ``stats-<pid>.json`` into the project dir:
the ``stats()`` of every django_lido pool it has open (none for stock Django).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from harness.process import ServedProcess

PACKAGE = "celeryproj"
TABLE = "celery_item"

_INIT = """\
from .celery_app import app

__all__ = ["app"]
"""

_SETTINGS = """\
import json
import os

_CONFIG = json.loads(open(os.environ["LIDO_CELERY_CONFIG"]).read())
SECRET_KEY = "celery-test"
USE_TZ = True
INSTALLED_APPS = [*_CONFIG["apps"], "celeryproj"]
DATABASES = _CONFIG["DATABASES"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CELERY_BROKER_URL = _CONFIG["broker_url"]
CELERY_RESULT_BACKEND = _CONFIG["result_backend"]
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
"""

_MODELS = f"""\
from django.db import models


class Item(models.Model):
    n = models.IntegerField()

    class Meta:
        app_label = "celeryproj"
        db_table = "{TABLE}"
"""

_CELERY_APP = """\
import json
import os
from pathlib import Path

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "celeryproj.settings")
app = Celery("celeryproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["celeryproj"])


def _write_stats(**_kwargs):
    pools = []
    try:
        from django_lido.backends import registry
    except ImportError:
        pass
    else:
        pools = [pool.stats() for _, pool in list(registry._pools.values())]
    out = Path(__file__).resolve().parent.parent / f"stats-{os.getpid()}.json"
    out.write_text(json.dumps({"pid": os.getpid(), "pools": pools}, default=str))


signals.worker_process_shutdown.connect(_write_stats, weak=False)
signals.worker_shutdown.connect(_write_stats, weak=False)
"""

_TASKS = """\
import os

from celery import shared_task
from django.db import connection

from celeryproj.models import Item


@shared_task
def query(n):
    Item.objects.filter(n=n).count()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (backend,) = cur.fetchone()
    return [os.getpid(), backend]
"""


def write_project(directory: Path, databases: dict[str, Any], broker_url: str,
                  result_backend: str, apps: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """Writes the project into ``directory`` and its config file; returns the config path.
    ``apps`` go to INSTALLED_APPS before the project's own."""
    pkg = directory / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    files = {
        "__init__.py": _INIT,
        "settings.py": _SETTINGS,
        "models.py": _MODELS,
        "celery_app.py": _CELERY_APP,
        "tasks.py": _TASKS,
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    config = directory / "config.json"
    config.write_text(
        json.dumps(
            {
                "DATABASES": databases,
                "broker_url": broker_url,
                "result_backend": result_backend,
                "apps": list(apps),
            }
        )
    )
    return config


def create_table_sql() -> str:
    return f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, n integer NOT NULL)"


class CeleryWorker(ServedProcess):
    """``celery -A celeryproj worker -P <pool> -c <concurrency>`` in ``directory`` (written by
    ``write_project``); ``start()`` returns once the worker logs that it is ready, ``stop()``
    asks for a warm shutdown (SIGTERM) and waits, bounded, then kills."""

    what = "celery worker"

    def __init__(self, directory: Path, config: Path, *, pool: str = "prefork",
                 concurrency: int = 4, extra_args: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.directory = directory
        self.config = config
        self.pool = pool
        self.concurrency = concurrency
        self.extra_args = extra_args
        super().__init__(directory / f"worker-{pool}.log", directory, {})

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", PACKAGE, "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-n", f"lido-{self.pool}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *self.extra_args,
        ]  # fmt: skip

    def ready(self) -> bool:
        return " ready." in self.log.read_text(errors="replace")

    def start(self, timeout: float = 30.0) -> Self:
        for old in self.directory.glob("stats-*.json"):
            old.unlink()
        # This process's environment as it is now (tests set variables just before).
        self.env = {
            **os.environ,
            "LIDO_CELERY_CONFIG": str(self.config),
            "DJANGO_SETTINGS_MODULE": f"{PACKAGE}.settings",
            "PYTHONPATH": str(self.directory),
            "C_FORCE_ROOT": "1",
        }
        return super().start(timeout)

    def process_stats(self) -> list[dict[str, Any]]:
        """What each exited worker process wrote: ``{"pid", "pools": [stats, ...]}``."""
        return [json.loads(p.read_text()) for p in sorted(self.directory.glob("stats-*.json"))]


def run_tasks_in_subprocess(
    broker_url: str, result_backend: str, count: int, timeout: float
) -> list[Any]:
    """``run_tasks`` in a child Python, so that the caller never imports Celery (a test
    process stays as the rest of the suite expects it); bounded by ``timeout`` plus start-up."""
    code = (
        "import json, sys\n"
        "from harness.celery_worker import run_tasks\n"
        "print(json.dumps(run_tasks(*json.loads(sys.argv[1]))))\n"
    )
    args = json.dumps([broker_url, result_backend, count, timeout])
    proc = subprocess.run(
        [sys.executable, "-c", code, args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sending tasks failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_tasks(broker_url: str, result_backend: str, count: int, timeout: float) -> list[Any]:
    """Sends ``count`` ``query`` tasks and waits for all their results, at most ``timeout``
    seconds in all (``TimeoutError`` past it); a failed task raises its error."""
    from celery import Celery

    client = Celery("lido-client", broker=broker_url, backend=result_backend)
    try:
        results = [client.send_task(f"{PACKAGE}.tasks.query", args=[i]) for i in range(count)]
        deadline = time.monotonic() + timeout
        values = []
        for result in results:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{count} tasks not done in {timeout:.0f} s")
            values.append(result.get(timeout=left))
        return values
    finally:
        client.close()
