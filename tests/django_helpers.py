"""Django set-up shared by the backend tests: settings configured once per process, and
``DATABASES`` entries for a test server."""

from __future__ import annotations

import gc
import itertools
import threading
from typing import Any

import django
from django.conf import settings
from django.db.utils import ConnectionHandler

LIDO_ENGINE = "django_lido.backends.postgresql"
_unique = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_unique)}"


def global_alias(alias: str, entry: dict[str, Any]) -> Any:
    """``django.db.connections[alias]`` for an entry added to the settings at run time (the
    settings are configured once per process, possibly by another test module)."""
    from django.db import connections

    if alias not in connections.settings:
        filled = ConnectionHandler({"default": {}, alias: entry}).settings[alias]
        assert connections.settings is settings.DATABASES
        settings.DATABASES[alias] = filled
    return connections[alias]


def configure(pg: Any, **databases: dict[str, Any]) -> None:
    """Configures Django once for this process; later calls only add the aliases that are
    missing (test modules run in any order)."""
    if settings.configured:
        for alias, entry in databases.items():
            if alias != "default":
                global_alias(alias, entry)
        return
    settings.configure(
        DATABASES=databases,
        INSTALLED_APPS=["django_lido"],
        USE_TZ=False,
        TIME_ZONE="UTC",
        SECRET_KEY="django-lido-tests",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def database(
    pg: Any,
    *,
    name: str = "postgres",
    engine: str = LIDO_ENGINE,
    pool: Any = None,
    options: dict[str, Any] | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """A DATABASES entry for ``pg``; ``pool`` goes to OPTIONS["pool"] unless None. A unique
    ``application_name`` keeps each test's pool and server connections its own."""
    params = pg._conn_params(dbname=name, tcp=False)
    opts: dict[str, Any] = {"application_name": unique("lido_dj")}
    if pool is not None:
        opts["pool"] = pool
    opts.update(options or {})
    return {
        "ENGINE": engine,
        "NAME": name,
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params["host"],
        "PORT": params["port"],
        "OPTIONS": opts,
        **entry,
    }


def handler(**databases: dict[str, Any]) -> ConnectionHandler:
    """A private ConnectionHandler (Django's ``connections`` for these entries)."""
    return ConnectionHandler(databases)


def one(w: Any, sql: str, params: Any = None) -> Any:
    """The first column of the first row of ``sql`` run through Django wrapper ``w``."""
    with w.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def write_in_a_thread_that_dies(h: ConnectionHandler, sql: str) -> None:
    """A thread takes ``h``'s default connection, runs ``sql`` in a transaction and ends
    holding it, without commit or close; returns once the thread's objects are collected."""

    def take_and_die() -> None:
        w = h["default"]
        w.set_autocommit(False)
        with w.cursor() as cur:
            cur.execute(sql)

    t = threading.Thread(target=take_and_die)
    t.start()
    t.join()
    gc.collect()
