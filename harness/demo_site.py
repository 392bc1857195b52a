"""The demo Django site (``demo/django_site``, package ``loadsite``) for tests that serve it
with a real gunicorn: where it is, and its database."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

SITE_DIR = Path(__file__).resolve().parent.parent / "demo" / "django_site"


def create_database(pg: Any, name: str, rows: int = 100) -> None:
    """(Re)creates database ``name`` on ``pg`` with the site's table of ``rows`` items."""
    with contextlib.suppress(Exception):
        pg.execute(f"DROP DATABASE IF EXISTS {name}")
    pg.create_database(name)
    pg.execute(
        "CREATE TABLE loadsite_item (id bigint PRIMARY KEY, name varchar(50) NOT NULL,"
        " value integer NOT NULL);"
        " INSERT INTO loadsite_item SELECT n, 'item ' || n, n"
        f" FROM generate_series(1, {int(rows)}) n",
        dbname=name,
    )
