"""psycopg 3 and psycopg2: the transaction status is libpq's, read without a round trip."""

from __future__ import annotations

from operator import attrgetter, methodcaller

from django_lido.drivers.base import Conn, Driver


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
