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


def assert_short_connect_matches_djangos(w: Any) -> None:
    """Once warm, ``w.connect()`` takes django-lido's short path; it must leave the wrapper
    exactly as Django's own ``connect()`` does from the same state (a previous holder's
    leftovers), and fire ``connection_created`` too. Fails if a Django release adds a step
    to connect() that the short path does not make."""
    from unittest import mock

    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created

    w.ensure_connection()
    w.close()  # warm: the pool exists for these settings

    def leftovers() -> None:
        w.in_atomic_block = True
        w.savepoint_ids = ["s1"]
        w.atomic_blocks = [object()]
        w.needs_rollback = True
        w.closed_in_transaction = True
        w.errors_occurred = True
        w.health_check_done = False
        w.run_on_commit = [("s1", lambda: None, False)]

    created: list[Any] = []

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection)

    connection_created.connect(on_created)
    try:
        states = []
        for connect in (lambda: BaseDatabaseWrapper.connect(w), w.connect):
            leftovers()
            # Only the long path looks the pool up.
            with mock.patch.object(w, "_lido_pool_for", wraps=w._lido_pool_for) as long:
                connect()
                state = {k: v for k, v in vars(w).items() if k != "_lido_pool_for"}
            states.append((long.call_count, state))
            w.close()
    finally:
        connection_created.disconnect(on_created)
    (long_calls, djangos), (short_calls, ours) = states
    assert (long_calls, short_calls) == (1, 0), "the second connect did not take the short path"
    assert ours.keys() == djangos.keys()
    # A deadline from the clock at connect: the same rule, a moment apart.
    theirs_at, ours_at = djangos.pop("close_at"), ours.pop("close_at")
    # The pool's record of each checkout: one per checkout, on both paths.
    assert (
        type(djangos.pop("_lido_lease")).__name__
        == type(ours.pop("_lido_lease")).__name__
        == "Lease"
    )
    assert (theirs_at is None) == (ours_at is None)
    assert theirs_at is None or 0 <= ours_at - theirs_at < 60
    differ = {k: (djangos[k], v) for k, v in ours.items() if djangos[k] != v}
    assert differ == {}, f"Django's connect() vs the short path: {differ}"
    assert created == [w, w]


def child_python(script: str, *args: str) -> str:
    """Runs ``script`` in a child Python with this one's import path (for what the test
    process must not import, or must set up differently); returns its last line of output."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]
