"""System checks (``manage.py check``) for databases on django-lido's backends.

Registered when a django-lido backend is imported and by the ``django_lido`` app. Checks
that need the server (``Tags.database``) run with ``manage.py check --database ALIAS``.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from django_lido.backends.pool_options import PoolSettings, pool_settings

BACKENDS_PREFIX = "django_lido.backends."


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
