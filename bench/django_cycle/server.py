"""The benchmark server as the parent sees it: a throwaway or given PostgreSQL or MariaDB."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from django_cycle.variants import DBNAME, MYSQL_DRIVERS


@dataclass
class BenchServer:
    """The server the children connect to, as the parent sees it."""

    name: str  # "PostgreSQL" or "MariaDB"
    version: str
    desc: str
    params: dict[str, str]  # for the children: host, port, user and maybe password
    pid: int | None  # the server process, for the CPU ledger; None if not ours
    admin: Callable[[], Any]  # opens an autocommit DB-API connection off the bench database
    count_sql: str  # connections to the bench database (one %s: its name), not the admin's


# (The admin connection is in autocommit: in a transaction PostgreSQL would keep serving one
# stats snapshot.)
POSTGRESQL_COUNT_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
)
# The admin connection has no default database; its id is left out anyway, in case it does.
MYSQL_COUNT_SQL = (
    "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()"
)


def prepare_database(conninfo: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DBNAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))


@contextmanager
def database(conninfo: str | None) -> Iterator[tuple[str, str, int | None]]:
    """Yields (admin conninfo to the postgres database, description, postmaster pid if
    known)."""
    if conninfo:
        yield conninfo, "server given by --conninfo", None
        return
    from harness.servers import PostgresServer

    server = PostgresServer().start()
    try:
        try:
            pid: int | None = int((server.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        yield (
            server.conninfo(dbname="postgres", tcp=False),
            "PostgresServer from harness.servers, Unix socket, trust",
            pid,
        )
    finally:
        server.cleanup()


def db_params(conninfo: str) -> tuple[dict[str, str], str]:
    """(connection parameters for the children, server version)"""
    import psycopg

    with psycopg.connect(conninfo) as conn:
        info = conn.info
        params = {"host": info.host, "port": str(info.port), "user": info.user}
        if info.password:
            params["password"] = info.password
        v = info.server_version
    return params, f"{v // 10000}.{v % 10000}"


@contextmanager
def bench_server(args: argparse.Namespace) -> Iterator[BenchServer]:
    """The server for --vendor, with an empty bench database."""
    if args.vendor == "mysql":
        with mariadb(args.mysql_url, args.driver) as server:
            yield server
        return
    import psycopg

    with database(args.conninfo) as (conninfo, desc, pid):
        prepare_database(conninfo)
        params, version = db_params(conninfo)
        yield BenchServer(
            name="PostgreSQL",
            version=version,
            desc=desc,
            params=params,
            pid=pid,
            admin=lambda: psycopg.connect(conninfo, autocommit=True),
            count_sql=POSTGRESQL_COUNT_SQL,
        )


@contextmanager
def mariadb(url: str | None, driver: str) -> Iterator[BenchServer]:
    """A throwaway MariaDB (or the server at `url`) with the bench database recreated."""
    from harness.mariadb import ExistingMariaDB, MariaDBServer

    server = ExistingMariaDB(url) if url else MariaDBServer()
    with server:  # starts and then removes a throwaway server; nothing for an existing one
        server.execute(f"DROP DATABASE IF EXISTS `{DBNAME}`")
        server.create_database(DBNAME)
        conn = server.conn_params(DBNAME)  # the Unix socket when the server has one
        params = {"host": conn["HOST"], "port": conn["PORT"], "user": conn["USER"]}
        if conn["PASSWORD"]:
            params["password"] = conn["PASSWORD"]
        version = server.execute("SELECT VERSION()")[0][0]
        pid: int | None = None
        if isinstance(server, MariaDBServer):
            desc = "MariaDBServer from harness.mariadb, Unix socket, root"
            # mariadbd's own pid, not that of the runuser/prlimit wrapper it may run under
            with suppress(OSError, ValueError, IndexError):
                pid = int((server.tmpdir / "mariadbd.pid").read_text().split()[0])
        else:
            desc = "server given by --mysql-url"
        yield BenchServer(
            name="MariaDB" if "mariadb" in version.lower() else "MySQL",
            version=version,
            desc=desc,
            params=params,
            pid=pid,
            admin=lambda: server.connect(autocommit=True, driver=MYSQL_DRIVERS[driver]),
            count_sql=MYSQL_COUNT_SQL,
        )
