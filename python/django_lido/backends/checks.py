"""System checks (``manage.py check``) for databases on django-lido's backends.

Registered when a django-lido backend is imported and by the ``django_lido`` app. Checks
that need the server (``Tags.database``) run with ``manage.py check --database ALIAS``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from django_lido.backends.pool_options import PoolSettings, pool_settings

BACKENDS_PREFIX = "django_lido.backends."

# ASGI servers whose presence in the process says that Django is served through ASGI.
ASGI_SERVERS = ("uvicorn", "daphne", "hypercorn", "granian")


def asgi_in_use() -> str | None:
    """Why this project looks served through ASGI (for the message), or None: the
    ``ASGI_APPLICATION`` setting (Channels, Daphne's runserver), an ASGI server loaded in
    this process, or Daphne or Channels in ``INSTALLED_APPS``."""
    from django.conf import settings

    if getattr(settings, "ASGI_APPLICATION", None):
        return "ASGI_APPLICATION is set"
    for name in ASGI_SERVERS:
        if name in sys.modules:
            return f"{name} is loaded"
    for app in ("daphne", "channels"):
        if app in settings.INSTALLED_APPS:
            return f"{app!r} is in INSTALLED_APPS"
    return None


def _lido_databases() -> list[tuple[str, dict[str, Any]]]:
    from django.conf import settings

    return [
        (alias, entry)
        for alias, entry in settings.DATABASES.items()
        if str(entry.get("ENGINE", "")).startswith(BACKENDS_PREFIX)
    ]


def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Pool options that are wrong, or that would keep connections from ever returning."""
    found: list[checks.CheckMessage] = []
    for alias, entry in _lido_databases():
        try:
            ps = pool_settings(alias, entry.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            found.append(checks.Error(str(exc), id="django_lido.E001"))
            continue
        if ps is None:
            continue
        found.extend(_settings_findings(alias, entry, ps))
    asgi = asgi_in_use()
    if asgi is not None:
        found.extend(_asgi_findings(asgi))
    return found


def _asgi_findings(why: str) -> list[checks.CheckMessage]:
    """Settings that cannot work as written when Django is served through ASGI."""
    found: list[checks.CheckMessage] = []
    for alias, entry in _lido_databases():
        options = entry.get("OPTIONS") or {}
        if options.get("pool", True) is False:
            continue
        age = entry.get("CONN_MAX_AGE", 0)
        if age != 0:
            found.append(
                checks.Warning(
                    f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {age!r} under ASGI ({why}): "
                    "Django runs each ASGI request's sync code (sync views, the async ORM's "
                    "calls, signals) in a thread of its own that serves no later request, so "
                    "a connection cannot be kept from one request to the next. django-lido "
                    "gives it back to the pool at the end of each request whatever "
                    "CONN_MAX_AGE (stock Django would leave it in the finished thread); "
                    "CONN_MAX_AGE has no effect under ASGI.",
                    hint="Set CONN_MAX_AGE = 0: the pool keeps the server connections open "
                    "between requests (min_size, max_idle). Code that uses the ORM outside "
                    "a request (an asyncio task that outlives its request, sync_to_async "
                    "in a script or a lifespan handler) keeps its connection until its "
                    "thread ends: wrap it in django_lido.close_connection.",
                    id="django_lido.W005",
                )
            )
    if found_unsafe := os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        found.append(
            checks.Warning(
                f"DJANGO_ALLOW_ASYNC_UNSAFE={found_unsafe!r} under ASGI ({why}): an ORM call "
                "made directly in async code (not through the async ORM or sync_to_async) "
                "takes a pooled connection on the event loop's thread, for the current "
                "task. Django closes connections at the end of a request only in the "
                "request's own thread, so that connection is never given back: it comes "
                "back only when the garbage collector frees its wrapper (reported as "
                "leaked), and after max_size such requests the others wait and time out.",
                hint="Unset DJANGO_ALLOW_ASYNC_UNSAFE in the server; in async code use the "
                "async ORM (aget, acount, async for...) or sync_to_async.",
                id="django_lido.W006",
            )
        )
    return found


def _settings_findings(
    alias: str, entry: dict[str, Any], ps: PoolSettings
) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    where = f"DATABASES[{alias!r}]"
    if "CONN_MAX_AGE" in entry and entry["CONN_MAX_AGE"] is None:
        found.append(
            checks.Warning(
                f"{where}['CONN_MAX_AGE'] is None: each thread keeps the connection it took "
                "from the pool for ever, so the pool never gets it back and threads beyond "
                f"max_size={ps.options['max_size']} wait and time out.",
                hint="Use CONN_MAX_AGE = 0 (give the connection back at the end of each "
                "request), or a number of seconds.",
                id="django_lido.W001",
            )
        )
    options = entry.get("OPTIONS") or {}
    if ps.transaction_pooler and options.get("assume_role"):
        found.append(
            checks.Warning(
                f"{where}: assume_role with transaction_pooler=True: a transaction pooler "
                "runs each transaction on any server connection, so SET ROLE does not stay.",
                hint="Connect as the role (USER) instead.",
                id="django_lido.W002",
            )
        )
    if ps.transaction_pooler and options.get("server_side_binding") is True:
        found.append(
            checks.Warning(
                f"{where}: server_side_binding with transaction_pooler=True; prepared "
                "statements are off behind a transaction pooler, so it buys nothing there.",
                id="django_lido.W003",
            )
        )
    return found


def check_server_limits(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A pool larger than the server accepts (run with ``--database``)."""
    if not databases:
        return []
    from django.db import connections

    found: list[checks.CheckMessage] = []
    lido = dict(_lido_databases())
    for alias in databases:
        entry = lido.get(alias)
        if entry is None:
            continue
        try:
            ps = pool_settings(alias, entry.get("OPTIONS") or {})
        except ImproperlyConfigured:
            continue  # reported by check_pool_settings
        if ps is None or ps.transaction_pooler:
            continue
        conn = connections[alias]
        server_limit = getattr(conn, "lido_server_connection_limit", None)
        limit = server_limit() if server_limit is not None else None
        if limit is not None and ps.options["max_size"] > limit:
            found.append(
                checks.Warning(
                    f"DATABASES[{alias!r}]: pool max_size={ps.options['max_size']} is above "
                    f"the {limit} connections the server accepts for this user, and that "
                    "is per process.",
                    hint="Lower max_size, or raise the server's max_connections.",
                    id="django_lido.W004",
                )
            )
    return found


_registered = False


def register() -> None:
    """Registers the checks once."""
    global _registered
    if not _registered:
        _registered = True
        checks.register(check_pool_settings)
        checks.register(check_server_limits, checks.Tags.database)
