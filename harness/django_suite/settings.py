"""The servers the suite runs against, the settings it runs with, and the code written or run
for the suite's interpreter."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from harness.mariadb import ExistingMariaDB, MariaDBServer
from harness.servers import ExistingPostgres, PostgresServer

VENDORS = ("postgresql", "mysql")
DRIVERS = ("psycopg", "psycopg2")  # PostgreSQL's
MYSQL_DRIVERS = ("mysqlclient", "pymysql")
VENDOR_DRIVERS = {"postgresql": DRIVERS, "mysql": MYSQL_DRIVERS}  # the first is the default
# The module each driver is imported as (PyMySQL is made Django's MySQLdb by sitecustomize).
DRIVER_MODULES = {
    "psycopg": "psycopg",
    "psycopg2": "psycopg2",
    "mysqlclient": "MySQLdb",
    "pymysql": "pymysql",
}
ENGINES = {
    ("stock", False): "django.db.backends.postgresql",
    ("stock", True): "django.contrib.gis.db.backends.postgis",
    ("lido", False): "django_lido.backends.postgresql",
    ("lido", True): "django_lido.backends.postgis",
}
MYSQL_ENGINES = {"stock": "django.db.backends.mysql", "lido": "django_lido.backends.mysql"}
DEFAULT_POOL_OPTIONS: dict[str, Any] = {"max_size": 4}
FORCE_PSYCOPG2_ENV = "LIDO_FORCE_PSYCOPG2"
FORCE_PYMYSQL_ENV = "LIDO_FORCE_PYMYSQL"
GEVENT_ENV = "LIDO_GEVENT_PATCH_ALL"


SITECUSTOMIZE = f"""\
# Written by harness.django_suite: Django imports psycopg (3) when it can, so
# hiding it is the only way to run Django on psycopg2 while psycopg is installed. Django's
# MySQL backend imports MySQLdb, which PyMySQL can stand in for. Under the gevent worker
# model every process is patched first, as gunicorn -k gevent does.
import os
import sys

if os.environ.get({GEVENT_ENV!r}) == "1":
    from gevent import monkey

    monkey.patch_all()
if os.environ.get({FORCE_PSYCOPG2_ENV!r}) == "1":
    sys.modules["psycopg"] = None
if os.environ.get({FORCE_PYMYSQL_ENV!r}) == "1":
    import pymysql

    pymysql.install_as_MySQLdb()
"""

PREFLIGHT = """\
import json, sys
import django
info = {"django": django.__version__, "python": sys.version.split()[0]}
if "--mysql" in sys.argv:
    from django.db.backends.mysql.base import Database
    # "MySQLdb" (mysqlclient), or "pymysql" after pymysql.install_as_MySQLdb()
    info["driver"] = {"MySQLdb": "mysqlclient"}.get(Database.__name__, Database.__name__)
else:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
    info["driver"] = "psycopg" if is_psycopg3 else "psycopg2"
if "--gis" in sys.argv:
    from django.conf import settings
    settings.configure()
    from django.contrib.gis.gdal import gdal_version
    from django.contrib.gis.geos import geos_version
    info["gdal"] = gdal_version().decode()
    info["geos"] = geos_version().decode()
print(json.dumps(info))
"""


Server = PostgresServer | ExistingPostgres
MySQLServer = MariaDBServer | ExistingMariaDB
AnyServer = Server | MySQLServer


def server_vendor(server: AnyServer) -> str:
    """``"mysql"`` for a MariaDB server, else ``"postgresql"``."""
    return "mysql" if isinstance(server, (MariaDBServer, ExistingMariaDB)) else "postgresql"


@contextlib.contextmanager
def suite_server(
    database_url: str | None = None, vendor: str = "postgresql"
) -> Iterator[AnyServer]:
    """An existing server from ``database_url`` (``postgresql://`` or ``mysql://``), else a
    throwaway PostgreSQL cluster or MariaDB server for ``vendor`` (removed on exit)."""
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    if database_url:
        yield ExistingMariaDB(database_url) if vendor == "mysql" else ExistingPostgres(database_url)
        return
    throwaway = MariaDBServer() if vendor == "mysql" else PostgresServer()
    with throwaway as server:
        yield server


def postgis_available(server: Server) -> bool:
    """Whether the server can ``CREATE EXTENSION postgis`` (its extension files exist)."""
    rows = server.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")
    return bool(rows)


def gis_prerequisites(server: Server) -> str | None:
    """Why ``gis_tests`` cannot run here (postgis extension or GDAL/GEOS libraries missing),
    or None when they can."""
    if not postgis_available(server):
        return f"the postgis extension is not available on {server!r}"
    proc = subprocess.run(
        [sys.executable, "-c", PREFLIGHT, "--gis"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"Django cannot load GDAL/GEOS: {lines[-1] if lines else proc.returncode}"
    return None


def settings_source(databases: Mapping[str, Any]) -> str:
    return (
        "# Written by harness.django_suite.\n"
        "# The suite's own defaults (SECRET_KEY, PASSWORD_HASHERS, DEFAULT_AUTO_FIELD where the\n"
        "# version sets it, USE_TZ) come from tests/test_sqlite.py of the same sdist.\n"
        "from test_sqlite import *  # noqa: F403\n\n"
        f"DATABASES = {json.dumps(databases, indent=4)}\n"
    )


def databases_setting(
    server: AnyServer,
    *,
    engine: str,
    prefix: str,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """``DATABASES`` with the ``default`` and ``other`` aliases the suite needs; the test
    databases are ``test_<prefix>`` and ``test_<prefix>_other`` (plus clones per process).

    A throwaway server is reached over TCP; an existing MariaDB over its Unix socket when
    its URL names one (``?unix_socket=``)."""
    if isinstance(server, (MariaDBServer, ExistingMariaDB)):
        my = server.conn_params(tcp=isinstance(server, MariaDBServer))
        entry = {
            "ENGINE": engine,
            "HOST": my["HOST"],
            "PORT": my["PORT"],
            "USER": my["USER"],
            "PASSWORD": my["PASSWORD"],
            "OPTIONS": dict(options or {}),
            # Django's MySQL tests expect 4-byte UTF-8 whatever the server's default.
            "TEST": {"CHARSET": "utf8mb4"},
        }
        return {
            "default": {**entry, "NAME": prefix},
            "other": {**entry, "NAME": f"{prefix}_other"},
        }
    params = server._conn_params(dbname=None, tcp=True)
    base = {
        "ENGINE": engine,
        "HOST": params["host"],
        "PORT": params["port"],
        "USER": params["user"],
        "PASSWORD": params.get("password", ""),
        "OPTIONS": dict(options or {}),
    }
    # Keywords from the URL's query (sslmode, ...) go to the driver as they are.
    base["OPTIONS"].update(
        {k: v for k, v in params.items() if k not in ("host", "port", "user", "password", "dbname")}
    )
    return {
        "default": {**base, "NAME": prefix},
        "other": {**base, "NAME": f"{prefix}_other"},
    }
