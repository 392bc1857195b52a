"""A Django ``DATABASES`` entry for a harness PostgreSQL server (its Unix socket), for the
projects that tests and benchmarks serve with real workers."""

from __future__ import annotations

from typing import Any


def postgres_entry(
    pg: Any, *, engine: str, app: str, conn_max_age: int | None = 0, **options: Any
) -> dict[str, Any]:
    """``engine`` on ``pg``'s ``postgres`` database; ``app`` is the ``application_name``
    (to count the server connections); ``options`` go to ``OPTIONS``."""
    params = pg._conn_params(dbname="postgres", tcp=False)
    return {
        "ENGINE": engine,
        "NAME": "postgres",
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params["host"],
        "PORT": params["port"],
        "CONN_MAX_AGE": conn_max_age,
        "OPTIONS": {"application_name": app, **options},
    }
