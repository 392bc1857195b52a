"""A small Django project that mounts django-lido's dashboard, served by a real gunicorn.

``write_project(root, database=..., runtime_dir=...)`` writes the project into ``root``:
auth, sessions and the login page of ``django.contrib.auth.urls`` (a plain template), the
dashboard under ``/lido/``, static files served by ``staticfiles`` (``insecure``, as a test
site may), and views that take connections: ``/hold?s=`` holds one inside ``atomic()``
after a statement with a parameter value (``SECRET_PARAM``) that must never show up in the
dashboard, ``/leak`` drops a connection taken from the pool, and ``/pid`` answers the
serving process's pid (after a query, so it has a pool).
``prepare(root)`` migrates and makes the users ``staff`` and ``plain`` (password
``PASSWORD``). ``GunicornServer(root)`` serves it (``start()`` waits until it answers).
Used by ``tests/test_dashboard.py`` and ``tests/test_dashboard_browser.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.asgi_server import AsgiServer, write_files

PASSWORD = "dash-pass-81"
SECRET_PARAM = "secret-param-7311"
SECRET_LITERAL = "secret-literal-5519"

_SETTINGS = """\
import os

SECRET_KEY = "dashboard-harness"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "dashsite.urls"
WSGI_APPLICATION = "dashsite.wsgi.application"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "django_lido",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
    "APP_DIRS": True,
    "OPTIONS": {{"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
    ]}},
}}]
STATIC_URL = "/static/"
LOGIN_URL = "/accounts/login/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {{"default": {database!r}}}
LIDO_RUNTIME_DIR = {runtime_dir!r}
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {{"err": {{"class": "logging.StreamHandler"}}}},
    "loggers": {{
        "django.request": {{"handlers": ["err"], "level": "ERROR"}},
        "django_lido": {{"handlers": ["err"], "level": "WARNING"}},
    }},
}}
"""

_URLS = """\
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path

from dashsite import views

urlpatterns = [
    path("lido/", include("django_lido.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
    path("hold", views.hold_connection_for_dashboard),
    path("pid", views.pid),
    path("leak", views.leak_connection_for_dashboard),
]
"""

_VIEWS = f"""\
import gc
import os
import time

from django.db import connection, connections, transaction
from django.http import JsonResponse


def hold_connection_for_dashboard(request):
    # A statement with a parameter value and a literal, then a transaction held open:
    # the dashboard may show the statement's shape, never either value.
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM auth_user"
                " WHERE username = %s OR username = '{SECRET_LITERAL}'",
                ["{SECRET_PARAM}"],
            )
            cur.fetchone()
        time.sleep(float(request.GET.get("s", "1")))
    return JsonResponse({{"pid": os.getpid()}})


def leak_connection_for_dashboard(request):
    # Takes a connection straight from the pool and drops it without putconn(): the pool
    # reports the leak with this function in the taking stack.
    conn = connections["default"].pool.getconn()
    del conn
    gc.collect()
    return JsonResponse({{"pid": os.getpid()}})


def pid(request):
    # A query, so that the worker that answers has a pool (and publishes it).
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({{"pid": os.getpid()}})
"""

_WSGI = """\
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashsite.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
"""

_LOGIN = """\
<!doctype html>
<html><head><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
<form method="post" action="{% url 'login' %}">
  {% csrf_token %}
  {{ form.as_p }}
  <input type="hidden" name="next" value="{{ next }}">
  <button type="submit" id="sign-in">Sign in</button>
</form>
</body></html>
"""

_PREPARE = f"""\
import django
django.setup()
from django.contrib.auth.models import User
from django.core.management import call_command

call_command("migrate", verbosity=0)
if not User.objects.filter(username="staff").exists():
    User.objects.create_user("staff", password="{PASSWORD}", is_staff=True)
    User.objects.create_user("plain", password="{PASSWORD}")
"""


def write_project(root: Path, *, database: dict[str, Any], runtime_dir: Path) -> Path:
    """Writes the project (package ``dashsite`` and its templates) into ``root``."""
    return write_files(root, {
        "dashsite/__init__.py": "",
        "dashsite/settings.py": _SETTINGS.format(database=database, runtime_dir=str(runtime_dir)),
        "dashsite/urls.py": _URLS,
        "dashsite/views.py": _VIEWS,
        "dashsite/wsgi.py": _WSGI,
        "dashsite/templates/registration/login.html": _LOGIN,
    })  # fmt: skip


def env_for(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "DJANGO_SETTINGS_MODULE": "dashsite.settings",
        **(extra or {}),
    }


def prepare(root: Path, python: str = sys.executable) -> None:
    """Migrates the database and makes the users ``staff`` and ``plain``."""
    subprocess.run(
        [python, "-c", _PREPARE], cwd=root, env=env_for(root), check=True, timeout=120,
        capture_output=True,
    )  # fmt: skip


class GunicornServer(AsgiServer):
    """``gunicorn dashsite.wsgi`` with ``workers`` processes of ``threads`` threads each;
    starting, stopping and the log are ``AsgiServer``'s."""

    module = "gunicorn"
    ready_path = "/pid"

    def __init__(self, root: Path, *, workers: int = 2, threads: int = 4) -> None:
        super().__init__(root, env={"DJANGO_SETTINGS_MODULE": "dashsite.settings"})
        self.workers = workers
        self.threads = threads

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def options(self) -> list[str]:
        return ["--chdir", str(self.root),
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                "--worker-class", "gthread", "--threads", str(self.threads),
                "--timeout", "60", "--graceful-timeout", "5", "--log-level", "warning",
                "dashsite.wsgi"]  # fmt: skip


def make_site(pg: Any, root: Path, *, dbname: str, pool: dict[str, Any]) -> Path:
    """A fresh database ``dbname`` on ``pg``, the project written into ``root`` on it with
    ``OPTIONS["pool"] = pool`` and its runtime directory in ``root / "run"``, migrated,
    with its users."""
    with contextlib.suppress(Exception):
        pg.execute(f"DROP DATABASE IF EXISTS {dbname}")
    pg.create_database(dbname)
    params = pg._conn_params(dbname=dbname, tcp=False)
    database = {
        "ENGINE": "django_lido.backends.postgresql",
        "NAME": dbname,
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params["host"],
        "PORT": params["port"],
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"pool": pool, "application_name": dbname},
    }
    write_project(root, database=database, runtime_dir=root / "run")
    prepare(root)
    return root
