"""What the pool needs to know about a DB-API driver, learned from its first connection.

The engine asks a driver for five things: the transaction status of a returned connection
(in libpq's codes: 0 idle, 1 active, 2 in transaction, 3 failed transaction, 4 unknown),
how to roll back, a round-trip check, how to close, and the socket's file descriptor for
the zero-round-trip probe. The status and fileno hooks run on the hot path, so they are C
callables (``operator.attrgetter``/``methodcaller``) where the driver allows.

MySQL/MariaDB drivers (mysqlclient, PyMySQL) report the transaction state in the server
status flags of the last reply, which the client keeps: no round trip either.
"""

from __future__ import annotations

from django_lido._green import check_driver
from django_lido.drivers.base import (
    GENERIC,
    TX_ACTIVE,
    TX_IDLE,
    TX_INERROR,
    TX_INTRANS,
    TX_UNKNOWN,
    Conn,
    Driver,
)
from django_lido.drivers.mysql import PYMYSQL, mysqlclient_driver
from django_lido.drivers.postgres import PSYCOPG, PSYCOPG2

__all__ = [
    "TX_ACTIVE",
    "TX_IDLE",
    "TX_INERROR",
    "TX_INTRANS",
    "TX_UNKNOWN",
    "Conn",
    "Driver",
    "driver_for",
    "transient_error",
]


def driver_for(conn: Conn) -> Driver:
    """The hooks for ``conn``'s driver, chosen by the module that defines its class."""
    module = type(conn).__module__ or ""
    root = module.partition(".")[0]
    if root == "psycopg":
        return PSYCOPG
    if root == "psycopg2":
        check_driver("psycopg2")
        return PSYCOPG2
    if root == "pymysql":
        return PYMYSQL
    if root == "MySQLdb":
        check_driver("mysqlclient")
        return mysqlclient_driver()
    return GENERIC


def transient_error(exc: BaseException) -> bool:
    """Whether a failed connect may succeed later, asked of the driver that raised it
    (chosen by the module that defines the exception's class: the pool may have no
    connection yet to learn the driver from)."""
    module = type(exc).__module__ or ""
    root = module.partition(".")[0]
    if root == "psycopg":
        return PSYCOPG.transient(exc)
    if root == "psycopg2":
        return PSYCOPG2.transient(exc)
    if root == "pymysql":
        return PYMYSQL.transient(exc)
    if root in ("MySQLdb", "_mysql_exceptions"):
        return mysqlclient_driver().transient(exc)
    return GENERIC.transient(exc)
