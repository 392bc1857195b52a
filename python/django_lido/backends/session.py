"""What the vendors' ``Session`` classes share: the reset policy as the pool's reset hook,
and the connections whose session a statement may have changed."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from django_lido.drivers import Conn

# id(connection) -> a weak reference to it, for the connections marked since their last
# return: by a statement (``statement_seen`` in backends/statements.py), or by a server-side
# cursor declared WITH HOLD (unmarked when the holder gives the connection back with all
# of them closed). An entry goes at the connection's next ``reset_auto``, or with the
# connection itself.
_changed: dict[int, weakref.ref[Conn]] = {}
_hold_cursors: dict[int, weakref.ref[Conn]] = {}


def _mark(marks: dict[int, weakref.ref[Conn]], conn: Conn) -> None:
    key = id(conn)
    if key not in marks:

        def forget(ref: weakref.ref[Conn]) -> None:
            if marks.get(key) is ref:
                del marks[key]

        try:
            marks[key] = weakref.ref(conn, forget)
        except TypeError:  # a connection class without weak references: held until reset
            marks[key] = lambda: conn  # type: ignore[assignment]


def _take(marks: dict[int, weakref.ref[Conn]], conn: Conn) -> bool:
    ref = marks.pop(id(conn), None)
    return ref is not None and ref() is conn


def mark_changed(conn: Conn) -> None:
    """Marks ``conn``: its session may hold state the next holder must not see."""
    _mark(_changed, conn)


def hold_cursor_opened(conn: Conn) -> None:
    """Marks ``conn``: a server-side cursor that outlives transactions was opened on it."""
    _mark(_hold_cursors, conn)


def hold_cursors_closed(conn: Conn) -> None:
    """Every such cursor opened on ``conn`` since its last return is closed again."""
    _hold_cursors.pop(id(conn), None)


def take_changed(conn: Conn) -> bool:
    """Whether ``conn`` was marked; clears the marks."""
    changed = bool(_changed) and _take(_changed, conn)
    return (bool(_hold_cursors) and _take(_hold_cursors, conn)) or changed


class SessionBase:
    """Per-physical-connection set-up and the reset policy of one pool."""

    def client_sees_change(self, conn: Conn) -> bool:
        """Whether what the client knows of the session without a round trip differs from
        a freshly set-up connection."""
        raise NotImplementedError

    def reset_auto(self, conn: Conn) -> None:
        """The full reset, only if a statement marked the connection (``mark_changed``) or
        the client can see that the session changed."""
        if ((_changed or _hold_cursors) and take_changed(conn)) or self.client_sees_change(conn):
            self.reset_full(conn)

    def reset_full(self, conn: Conn) -> None:
        """The session as after connecting and setting up."""
        raise NotImplementedError

    def reset_hook(self, policy: str | Callable[[Conn], object]) -> Callable[[Conn], object] | None:
        """``Pool``'s reset for ``OPTIONS["pool"]["reset"]``: None for "rollback" (the pool
        rolls back anyway)."""
        if callable(policy):
            return policy
        return {"auto": self.reset_auto, "full": self.reset_full, "rollback": None}[policy]
