"""The driver hooks' shape and the generic DB-API driver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import methodcaller
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


def _generic_fileno(conn: Conn) -> int:
    fileno = getattr(conn, "fileno", None)
    return fileno() if callable(fileno) else -1


def _generic_check(conn: Conn) -> None:
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        cur.close()
    conn.rollback()


GENERIC = Driver(
    name="dbapi",
    status_source=None,
    status_attr="",
    rollback=methodcaller("rollback"),
    check=_generic_check,
    close=methodcaller("close"),
    fileno=_generic_fileno,
)
