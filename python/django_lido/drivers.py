"""What the pool needs to know about a DB-API driver, learned from its first connection.

The engine asks a driver for five things: the transaction status of a returned connection
(in libpq's codes: 0 idle, 1 active, 2 in transaction, 3 failed transaction, 4 unknown),
how to roll back, a round-trip check, how to close, and the socket's file descriptor for
the zero-round-trip probe. The status and fileno hooks run on the hot path, so they are C
callables (``operator.attrgetter``/``methodcaller``) where the driver allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, methodcaller
from typing import Any

Conn = Any

TX_IDLE, TX_ACTIVE, TX_INTRANS, TX_INERROR, TX_UNKNOWN = range(5)


@dataclass(frozen=True)
class Driver:
    """Hooks for one DB-API driver. ``status_source`` None means "unknown: always roll
    back on return"."""

    name: str
    # With ``status_attr``: conn -> an object (not referencing conn) whose attribute of that
    # name is the status, looked up once per connection so a return reads one attribute.
    # Without (""): conn -> the status, called on every return.
    status_source: Callable[[Conn], object] | None
    status_attr: str
    rollback: Callable[[Conn], object]
    check: Callable[[Conn], object]
    close: Callable[[Conn], object]
    fileno: Callable[[Conn], int]


def _no_fileno(conn: Conn) -> int:
    return -1


def _generic_fileno(conn: Conn) -> int:
    fileno = getattr(conn, "fileno", None)
    return fileno() if callable(fileno) else -1


def _psycopg_check(conn: Conn) -> None:
    # An empty query is the cheapest round trip; outside autocommit it would open a
    # transaction, so switch autocommit on around it (the connection is idle here).
    if conn.autocommit:
        conn.execute("")
        return
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        conn.autocommit = False


def _psycopg2_check(conn: Conn) -> None:
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.autocommit = autocommit


def _generic_check(conn: Conn) -> None:
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        cur.close()
    conn.rollback()


PSYCOPG = Driver(
    name="psycopg",
    status_source=attrgetter("pgconn"),
    status_attr="transaction_status",
    rollback=methodcaller("rollback"),
    check=_psycopg_check,
    close=methodcaller("close"),
    fileno=methodcaller("fileno"),
)

PSYCOPG2 = Driver(
    name="psycopg2",
    # conn.info would reference the connection and keep leased ones alive.
    status_source=methodcaller("get_transaction_status"),
    status_attr="",
    rollback=methodcaller("rollback"),
    check=_psycopg2_check,
    close=methodcaller("close"),
    fileno=methodcaller("fileno"),
)

GENERIC = Driver(
    name="dbapi",
    status_source=None,
    status_attr="",
    rollback=methodcaller("rollback"),
    check=_generic_check,
    close=methodcaller("close"),
    fileno=_generic_fileno,
)


def driver_for(conn: Conn) -> Driver:
    """The hooks for ``conn``'s driver, chosen by the module that defines its class."""
    module = type(conn).__module__ or ""
    root = module.partition(".")[0]
    if root == "psycopg":
        return PSYCOPG
    if root == "psycopg2":
        return PSYCOPG2
    return GENERIC
