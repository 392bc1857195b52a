"""Django's ``connect()`` made short, for a wrapper whose settings are unchanged.

Checkout is on every request's path, and Django's ``connect()`` costs about as much again
as the pool's checkout and return together (some 40 Python calls: the parameters rebuilt,
the pool property three times, its ``open()``...). Once a wrapper has connected through
Django's own ``connect()`` with the current settings, ``FastConnectMixin.connect`` makes
the same resets of the wrapper's state in the same order, takes a connection from the same
pool, does what the stock ``get_new_connection`` does to a pooled connection
(``_lido_after_checkout``), then Django's autocommit and connection-state steps and its
signal. What only the settings decide is kept in one ``ConnectCache`` per wrapper.

It mirrors ``BaseDatabaseWrapper.connect()`` in django/db/backends/base/base.py (lines
237-261 in Django 5.2 and 6.1) and the common case of ``set_autocommit()`` (457-492 there).
Guarded by:

- ``assert_short_connect_matches_djangos`` (tests/django_helpers.py): the wrapper after
  both paths from the same state must match, for PostgreSQL and MySQL
  (``test_short_connect_leaves_the_wrapper_as_djangos_connect_does``);
- ``test_connect_steps_replaced_in_a_subclass_or_instance_are_honoured``
  (tests/test_django_backend.py), which replaces each name of ``LIDO_CONNECT_STEPS``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.utils.asyncio import async_unsafe

from django_lido._lido import Lease
from django_lido.backends.pool_options import CONSUMED_KEYS, PoolSettings, driver_options
from django_lido.drivers import Conn
from django_lido.errors import PoolTimeout
from django_lido.pool import Pool

if TYPE_CHECKING:

    class _Wrapper(BaseDatabaseWrapper):
        """Django's wrapper as the mixins use it, with what django-stubs leaves out. At run
        time the mixins derive from object, and the stock wrapper follows them in the
        backend's bases."""

        Database: Any  # the driver module, set by each stock backend

        def _set_autocommit(self, autocommit: bool) -> None: ...
        def _cursor(self, name: str | None = None) -> Any: ...

else:
    _Wrapper = object


@dataclass(slots=True, eq=False)
class ConnectCache:
    """What a wrapper looked up from its settings at its last connects; each pair is reused
    while its key is unchanged."""

    # OPTIONS' pool settings as given (a copy) -> parsed, None for no pool.
    settings_given: tuple[Any, ...] | None = None
    settings: PoolSettings | None = None
    # What the connection parameters depend on (a few fields, a copy of OPTIONS) -> them.
    params_key: tuple[Any, ...] | None = None
    params_options: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # The parameters object a pool was looked up for -> that pool.
    pool_params: dict[str, Any] | None = None
    pool: Pool | None = None
    # The same, of the last connect through Django's own connect(): the short path's pool.
    warm_params: dict[str, Any] | None = None
    warm_pool: Pool | None = None

    def forget_pool(self) -> None:
        self.pool_params = self.pool = self.warm_params = self.warm_pool = None


class FastConnectMixin(_Wrapper):
    """The short connect path and the parameter cache it relies on."""

    # The pool the current connection came from; None for an unpooled connection.
    _lido_conn_pool: Pool | None = None
    lido_vendor: str = ""
    # The pool's record of the current connection, told of its statements and transactions
    # (statements.py); None for an unpooled connection.
    _lido_lease: Lease | None = None

    # Methods the short connect path does not call (``_lido_after_checkout`` stands in for
    # the first, a check that the settings are unchanged for the next two, the common case
    # of the last is inlined): replaced in a subclass or on the instance (a test's mock),
    # they make every connect take the long way, through them.
    LIDO_CONNECT_STEPS = (
        "get_new_connection",
        "get_connection_params",
        "check_settings",
        "set_autocommit",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lido_cache = ConnectCache()
        super().__init__(*args, **kwargs)

    # --- vendor hooks --------------------------------------------------------------------
    def _lido_after_checkout(self, conn: Conn) -> None:
        """What the stock ``get_new_connection`` does to a connection it took from the pool,
        for the short connect path (the connection is ``self.connection`` already)."""

    def _lido_timeout_bases(self) -> tuple[type[BaseException], ...]:
        """What a ``PoolTimeout`` raised by the backend also is: the driver's
        ``OperationalError``, so that Django wraps it like any failed connect."""
        return (self.Database.OperationalError,)

    def _lido_build_connection_params(self) -> dict[str, Any]:
        """Django's connection parameters, built from the driver options only (Django passes
        every OPTIONS key to the driver, and its psycopg2 code refuses "pool")."""
        settings_dict = self.settings_dict
        options = settings_dict["OPTIONS"]
        if CONSUMED_KEYS.isdisjoint(options):
            return super().get_connection_params()
        self.settings_dict = {**settings_dict, "OPTIONS": driver_options(options)}
        try:
            return super().get_connection_params()
        finally:
            self.settings_dict = settings_dict

    # --- Django's hook points -------------------------------------------------------------
    def get_connection_params(self) -> dict[str, Any]:
        # Django builds the parameters on every connect, that is at every checkout; they
        # change only with the settings, so the last result is reused (the same object)
        # while what goes into it compares equal: a few fields, OPTIONS (the pool settings
        # included) and the time zone.
        sd = self.settings_dict
        options = sd["OPTIONS"]
        fingerprint = (
            sd["NAME"],
            sd["USER"],
            sd["PASSWORD"],
            sd["HOST"],
            sd["PORT"],
            self.timezone,
            django_settings.USE_TZ,
        )
        cache = self._lido_cache
        if cache.params_key == fingerprint and cache.params_options == options:
            return cache.params
        params = self._lido_build_connection_params()
        # Nested dicts copied too, so that a change made in place to OPTIONS["pool"] is
        # seen by the comparison above.
        copied = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
        cache.params_key, cache.params_options, cache.params = fingerprint, copied, params
        return params

    @async_unsafe
    def connect(self) -> None:
        pool = self._lido_warm_pool()
        if pool is None:
            super().connect()
            if self._lido_conn_pool is not None and _short_path_allowed(type(self)):
                cache = self._lido_cache
                cache.warm_params, cache.warm_pool = cache.pool_params, cache.pool
            return
        # Django's connect() from here on, in its order, with the connection from ``pool``.
        settings_dict = self.settings_dict
        self.in_atomic_block = False
        self.savepoint_ids = []
        self.atomic_blocks = []
        self.needs_rollback = False
        self.health_check_enabled = settings_dict["CONN_HEALTH_CHECKS"]
        max_age = settings_dict["CONN_MAX_AGE"]
        self.close_at = None if max_age is None else time.monotonic() + max_age
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.health_check_done = True
        try:
            conn = pool.getconn()
        except PoolTimeout as exc:
            raise timeout_class(self._lido_timeout_bases())(*exc.args) from exc.__cause__
        self.connection = conn
        self._lido_conn_pool = pool
        self._lido_lease = pool._lease(conn, self.lido_vendor)
        self._lido_after_checkout(conn)
        autocommit = settings_dict["AUTOCOMMIT"]
        if autocommit and not self.run_commit_hooks_on_set_autocommit_on:
            # All that set_autocommit(True) does right after the resets above, connected,
            # outside any atomic block, with its health check done and no hooks to run.
            self._set_autocommit(True)
            self.autocommit = True
        else:
            self.set_autocommit(autocommit)
        self.init_connection_state()
        if connection_created.receivers:
            connection_created.send(sender=self.__class__, connection=self)
        self.run_on_commit = []

    def _lido_warm_pool(self) -> Pool | None:
        """The pool of the last connect through Django's own connect() if the current
        settings still use it, else None (then Django's connect() runs again)."""
        cache = self._lido_cache
        pool = cache.warm_pool
        if pool is None:
            return None
        # A step replaced on the instance: LIDO_CONNECT_STEPS, spelled out because this runs
        # at every checkout (half the cost of keys().isdisjoint()); a test replaces each
        # name of the tuple in turn, so the two cannot drift apart unnoticed.
        replaced = self.__dict__
        if (
            "get_new_connection" in replaced
            or "get_connection_params" in replaced
            or "check_settings" in replaced
            or "set_autocommit" in replaced
        ):
            return None
        self.check_settings()
        # The same object while the settings are unchanged (get_connection_params).
        if cache.warm_params is not self.get_connection_params() or pool.closed:
            return None
        return pool


_short_path: dict[type, bool] = {}


def _short_path_allowed(cls: type[FastConnectMixin]) -> bool:
    """Whether ``cls`` connects with the steps its backend's ``_lido_after_checkout`` was
    written for: those of the django-lido ``DatabaseWrapper`` it is or derives from. A
    subclass that replaces one of ``LIDO_CONNECT_STEPS`` always connects the long way."""
    allowed = _short_path.get(cls)
    if allowed is None:
        shipped = next(k for k in cls.__mro__ if k.__module__.startswith(_BACKENDS_PACKAGE))
        steps = cls.LIDO_CONNECT_STEPS
        allowed = all(getattr(cls, name) is getattr(shipped, name) for name in steps)
        _short_path[cls] = allowed
    return allowed


_BACKENDS_PACKAGE = __name__.rpartition(".")[0] + "."


_timeout_classes: dict[tuple[type[BaseException], ...], type[PoolTimeout]] = {}


def timeout_class(bases: tuple[type[BaseException], ...]) -> type[PoolTimeout]:
    """``PoolTimeout`` that is also each of ``bases`` (one class per combination)."""
    cls = _timeout_classes.get(bases)
    if cls is None:
        cls = type("PoolTimeout", (PoolTimeout, *bases), {"__module__": __name__})
        _timeout_classes[bases] = cls
    return cls
