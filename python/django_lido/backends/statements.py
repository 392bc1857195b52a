"""The statement hook: every statement that goes through Django's cursors passes here.

A pooled backend's ``make_cursor`` wraps each driver cursor in ``HookedCursorWrapper``
instead of Django's own class (the class is the only difference, so a cursor costs what
it did); ``make_debug_cursor`` gives the debug wrapper the stock backend picks a subclass
of its class (``hooked``). Their ``_execute`` and ``_executemany``, the executors Django's
``execute()``/``executemany()`` end in after any ``execute_wrapper`` of the user's, call
``statement_seen(db, sql)`` with the SQL about to be sent, then Django's own executor.

``statement_seen`` is the one place that learns of statements. With the connection from a
pool (``db._lido_lease``, the pool's record of it), the statement is timed: ``lease.begin``
before it is sent (the statement is running; the classifier's answer comes back),
``lease.end`` after (its time, ``rowcount`` and whether it raised go into the pool's query
statistics by shape, and the lease's last statement: ``Pool.connections()``). Beside that,
the engine's classifier (``changes_session``, in Rust: 15-200 ns) tells a statement that
can leave state on the session beyond its transaction (``SET``, ``CREATE TEMP``,
``LISTEN``, advisory locks, ``PREPARE``, MySQL user variables...), and such a statement
marks the physical connection, so that the default reset policy resets it fully on return
(``SessionBase.reset_auto``). ``callproc`` marks the connection unconditionally: a
procedure may change anything. Statements sent on the driver's connection directly
(``connection.connection.cursor()``), and state changed inside a server function or
procedure called from an ordinary ``SELECT``, are not seen (docs/django.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db.backends.utils import CursorWrapper

from django_lido._lido import Lease, changes_session
from django_lido.backends.session import mark_changed

if TYPE_CHECKING:
    from django_lido.backends.pooled import PooledDatabaseMixin


def statement_seen(db: PooledDatabaseMixin, sql: Any) -> Lease | None:
    """Called with each statement's SQL before it is sent (``db.lido_vendor``, the dialect:
    "postgresql" or "mysql"): marks a pooled connection whose session the statement may
    change, and returns the lease to tell when it ended (``statement_done``).
    (``HookedCursorWrapper`` makes the same calls inline: a Python call less a statement.)"""
    lease = db._lido_lease
    if lease is None:
        if changes_session(sql, db.lido_vendor):
            _session_changed(db)
    elif lease.begin(sql):
        _session_changed(db)
    return lease


def _session_changed(db: PooledDatabaseMixin) -> None:
    if db._lido_conn_pool is not None and db.connection is not None:
        mark_changed(db.connection)


# Django's own executors (django-stubs leaves the private ones out).
_execute: Callable[..., Any] = CursorWrapper._execute  # type: ignore[attr-defined]
_executemany: Callable[..., Any] = CursorWrapper._executemany  # type: ignore[attr-defined]
_callproc = CursorWrapper.callproc


class HookedCursorWrapper(CursorWrapper):
    """Django's ``CursorWrapper`` that shows each statement to ``statement_seen``."""

    db: PooledDatabaseMixin

    # Django calls its executors with (sql, params, many, context) and ignores the last two;
    # named here, they cost no tuple packing (a varargs signature costs about as much as
    # the classifier).
    def _execute(self, sql: Any, params: Any, many: Any = None, context: Any = None) -> Any:
        db = self.db
        lease = db._lido_lease  # statement_seen(db, sql), inline
        if lease is None:
            if changes_session(sql, db.lido_vendor):
                _session_changed(db)
            return _execute(self, sql, params, many, context)
        if lease.begin(sql):
            _session_changed(db)
        try:
            result = _execute(self, sql, params, many, context)
        except BaseException:
            lease.end(None, True)
            raise
        lease.end(self.cursor.rowcount, False)
        return result

    def _executemany(self, sql: Any, param_list: Any, many: Any = None, context: Any = None) -> Any:
        db = self.db
        lease = statement_seen(db, sql)
        if lease is None:
            return _executemany(self, sql, param_list, many, context)
        try:
            result = _executemany(self, sql, param_list, many, context)
        except BaseException:
            lease.end(None, True)
            raise
        lease.end(self.cursor.rowcount, False)
        return result

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        _session_changed(self.db)
        return _callproc(self, procname, params, kparams)


class _Hook:
    """The same hook in front of any cursor wrapper class (Django's own executors through
    ``super()``): for the debug wrappers, whose class the stock backend picks."""

    db: PooledDatabaseMixin

    def _execute(self, sql: Any, params: Any, *ignored_wrapper_args: Any) -> Any:
        lease = statement_seen(self.db, sql)
        if lease is None:
            return super()._execute(sql, params, *ignored_wrapper_args)  # type: ignore[misc]
        try:
            result = super()._execute(sql, params, *ignored_wrapper_args)  # type: ignore[misc]
        except BaseException:
            lease.end(None, True)
            raise
        lease.end(self.cursor.rowcount, False)  # type: ignore[attr-defined]
        return result

    def _executemany(self, sql: Any, param_list: Any, *ignored_wrapper_args: Any) -> Any:
        lease = statement_seen(self.db, sql)
        if lease is None:
            return super()._executemany(sql, param_list, *ignored_wrapper_args)  # type: ignore[misc]
        try:
            result = super()._executemany(sql, param_list, *ignored_wrapper_args)  # type: ignore[misc]
        except BaseException:
            lease.end(None, True)
            raise
        lease.end(self.cursor.rowcount, False)  # type: ignore[attr-defined]
        return result

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        _session_changed(self.db)
        return super().callproc(procname, params, kparams)  # type: ignore[misc]


_hooked: dict[type, type] = {}


def hooked(wrapper: CursorWrapper) -> CursorWrapper:
    """``wrapper`` (a Django cursor wrapper, e.g. PostgreSQL's ``CursorDebugWrapper`` with
    its ``copy()`` logging) made to show its statements to ``statement_seen``."""
    cls = type(wrapper)
    new = _hooked.get(cls)
    if new is None:
        new = _hooked[cls] = type("Hooked" + cls.__name__, (_Hook, cls), {})
    wrapper.__class__ = new
    return wrapper
