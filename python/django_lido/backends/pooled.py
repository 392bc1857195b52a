"""The glue between a Django ``DatabaseWrapper`` and a shared ``Pool``.

Django "connects" when a thread first needs the database and "closes" at the end of the
request (``close_old_connections``) or on an explicit ``close()``. With this mixin,
connecting takes a connection from the process's pool for these settings and closing gives
it back; nothing else in Django's connection handling changes.

A vendor backend mixes ``PooledDatabaseMixin`` in front of Django's stock
``DatabaseWrapper`` and implements the ``_lido_*`` hooks: how to open and set up a physical
connection, which parameters make two pools different, and its reset policy; and says with
``lido_stock_uses_pool`` whether Django's stock ``get_new_connection`` already takes from
``self.pool``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from django.conf import settings as django_settings
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper

from django_lido.backends import registry
from django_lido.backends.pool_options import (
    CONSUMED_KEYS,
    PoolSettings,
    driver_options,
    pool_settings,
)
from django_lido.errors import PoolTimeout
from django_lido.pool import Pool

Conn = Any


def freeze(params: Mapping[str, Any]) -> tuple[tuple[str, Hashable], ...]:
    """A hashable, order-independent form of connection parameters."""
    out = []
    for key, value in params.items():
        try:
            hash(value)
        except TypeError:
            value = repr(value)
        out.append((key, value))
    return tuple(sorted(out))


class PooledDatabaseMixin:
    """Makes a stock Django ``DatabaseWrapper`` take its connections from a pool.

    ``connection.pool`` is the ``django_lido.Pool`` these settings use (None when pooling
    is off with ``OPTIONS["pool"] = False``, and for Django's no-database connection).
    """

    # The pool the current connection came from; None for an unpooled connection.
    _lido_conn_pool: Pool | None = None
    # While ``get_new_connection`` runs: the pool Django's stock code must take from.
    _lido_next_pool: Pool | None = None
    # Caches of the last look-ups, checked on each connect: (raw OPTIONS pool settings,
    # parsed), (what the connection parameters depend on, OPTIONS, the parameters) and
    # (the parameters, their pool).
    _lido_settings_cache: tuple[Any, PoolSettings | None] | None = None
    _lido_params_cache: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]] | None = None
    _lido_pool_cache: tuple[dict[str, Any], Pool] | None = None
    # Set while Django's health check runs: a connection it closes is discarded.
    _lido_discard = False

    # --- vendor hooks --------------------------------------------------------------------
    lido_vendor: str = ""
    # Whether Django's stock ``get_new_connection`` takes its connection from ``self.pool``
    # (Django's native pool protocol, as in its PostgreSQL backend). If not (MySQL), the
    # mixin takes the connection from the pool itself and the stock code opens only
    # unpooled connections.
    lido_stock_uses_pool: bool = True

    def _lido_target(self, conn_params: dict[str, Any]) -> registry.Target:
        raise NotImplementedError

    def _lido_key(self, conn_params: dict[str, Any]) -> Hashable:
        """What, besides the pool settings, tells two pools apart."""
        raise NotImplementedError

    def _lido_opener(
        self, conn_params: dict[str, Any], settings: PoolSettings
    ) -> tuple[Callable[[], Conn], Callable[[Conn], object] | None]:
        """A function opening one set-up physical connection, and the reset hook."""
        raise NotImplementedError

    def _lido_timeout_bases(self) -> tuple[type[BaseException], ...]:
        """What a ``PoolTimeout`` raised by the backend also is: the driver's
        ``OperationalError``, so that Django wraps it like any failed connect."""
        return (self.Database.OperationalError,)  # type: ignore[attr-defined]

    def _lido_build_connection_params(self) -> dict[str, Any]:
        """Django's connection parameters, built from the driver options only (Django passes
        every OPTIONS key to the driver, and its psycopg2 code refuses "pool")."""
        settings_dict = self.settings_dict  # type: ignore[has-type]
        options = settings_dict["OPTIONS"]
        if CONSUMED_KEYS.isdisjoint(options):
            return super().get_connection_params()  # type: ignore[misc, no-any-return]
        self.settings_dict = {**settings_dict, "OPTIONS": driver_options(options)}
        try:
            return super().get_connection_params()  # type: ignore[misc, no-any-return]
        finally:
            self.settings_dict = settings_dict

    # --- settings and pool look-up --------------------------------------------------------
    def _lido_settings(self) -> PoolSettings | None:
        options = self.settings_dict["OPTIONS"]  # type: ignore[attr-defined]
        pool = options.get("pool", True)
        # A copy of a dict, so that a change made in place is seen too.
        raw = (dict(pool) if isinstance(pool, dict) else pool,
               options.get("MAX_CONNS"), options.get("MIN_CONNS"))  # fmt: skip
        cached = self._lido_settings_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        settings = pool_settings(self.alias, options)  # type: ignore[attr-defined]
        self._lido_settings_cache = (raw, settings)
        return settings

    def _lido_registry_key(self, conn_params: dict[str, Any], settings: PoolSettings) -> Hashable:
        return (type(self).__module__, self._lido_key(conn_params), settings.pool_key())

    def get_connection_params(self) -> dict[str, Any]:
        # Django builds the parameters on every connect, that is at every checkout; they
        # change only with the settings, so the last result is reused (the same object)
        # while what goes into it compares equal: a few fields, OPTIONS, the time zone and
        # the pool settings.
        sd = self.settings_dict  # type: ignore[has-type]
        options = sd["OPTIONS"]
        fingerprint = (
            sd["NAME"],
            sd["USER"],
            sd["PASSWORD"],
            sd["HOST"],
            sd["PORT"],
            self.timezone,  # type: ignore[attr-defined]
            django_settings.USE_TZ,
            self._lido_settings() if self.alias != NO_DB_ALIAS else None,  # type: ignore[attr-defined]
        )
        cached = self._lido_params_cache
        if cached is not None and cached[0] == fingerprint and cached[1] == options:
            return cached[2]
        params = self._lido_build_connection_params()
        self._lido_params_cache = (fingerprint, dict(options), params)
        return params

    def _lido_pool_for(self, conn_params: dict[str, Any]) -> Pool | None:
        """The pool for these parameters (created on first use), or None if pooling is off."""
        cached = self._lido_pool_cache
        # The parameters object is the cached one while the settings, pool settings
        # included, are unchanged (get_connection_params): then so is the pool.
        if cached is not None and cached[0] is conn_params and not cached[1].closed:
            return cached[1]
        if self.alias == NO_DB_ALIAS:  # type: ignore[attr-defined]
            return None
        settings = self._lido_settings()
        if settings is None:
            return None
        target = self._lido_target(conn_params)

        def create() -> Pool:
            connect, reset = self._lido_opener(dict(conn_params), settings)
            return Pool(
                connect,
                name=settings.name or f"{self.alias}:{target.database}",  # type: ignore[attr-defined]
                check=settings.check,
                reset=reset,
                probe=settings.probe,
                **settings.engine,
            )

        pool = registry.get_or_create(
            self._lido_registry_key(conn_params, settings), target, create
        )
        if settings.open:
            # Outside the registry's lock: opening min_size connections may take a while.
            # A no-op once they are open.
            pool.wait()
        self._lido_pool_cache = (conn_params, pool)
        return pool

    @property
    def pool(self) -> Pool | None:
        if self._lido_next_pool is not None:
            return self._lido_next_pool
        if self.alias == NO_DB_ALIAS or self._lido_settings() is None:  # type: ignore[attr-defined]
            return None
        return self._lido_pool_for(self.get_connection_params())  # type: ignore[attr-defined]

    # --- Django's hook points -------------------------------------------------------------
    def get_new_connection(self, conn_params: dict[str, Any]) -> Conn:
        pool = self._lido_pool_for(conn_params)
        try:
            if pool is not None and not self.lido_stock_uses_pool:
                conn = pool.getconn()
            else:
                # Django's stock code takes the connection from ``self.pool`` (Django's
                # native pool protocol: open(), getconn()), then does its set-up.
                self._lido_next_pool = pool
                try:
                    conn = super().get_new_connection(conn_params)  # type: ignore[misc]
                finally:
                    self._lido_next_pool = None
        except PoolTimeout as exc:
            raise _timeout_class(self._lido_timeout_bases())(*exc.args) from None
        self._lido_conn_pool = pool
        return conn

    def _close(self) -> None:
        conn = self.connection  # type: ignore[attr-defined]
        if conn is None:
            return
        pool = self._lido_conn_pool
        with self.wrap_database_errors:  # type: ignore[attr-defined]
            if pool is None:
                conn.close()
                return
            if self._lido_discard:
                # Closed first, the connection comes back to the pool broken and is dropped.
                with contextlib.suppress(Exception):
                    conn.close()
            try:
                pool.putconn(conn)
            finally:
                # The connection is the pool's again: never usable through this wrapper.
                self.connection = None
                self._lido_conn_pool = None

    def close_pool(self) -> None:
        """Closes the pool of this alias's current settings, if one is open; the next
        connect makes a new one. Connections in use close when they come back."""
        self._lido_pool_cache = None
        if self.alias == NO_DB_ALIAS:  # type: ignore[attr-defined]
            return
        settings = self._lido_settings()
        if settings is not None:
            conn_params = self.get_connection_params()  # type: ignore[attr-defined]
            registry.close(self._lido_registry_key(conn_params, settings))

    def close_if_health_check_failed(self) -> None:
        # Django's pooled PostgreSQL backend skips this ("the pool only returns healthy
        # connections"), but a thread may keep its pooled connection across requests
        # (CONN_MAX_AGE > 0): then CONN_HEALTH_CHECKS applies as without a pool, and a
        # connection Django finds unusable is discarded, not given back to the pool.
        self._lido_discard = True
        try:
            BaseDatabaseWrapper.close_if_health_check_failed(self)  # type: ignore[arg-type]
        finally:
            self._lido_discard = False


_timeout_classes: dict[tuple[type[BaseException], ...], type[PoolTimeout]] = {}


def _timeout_class(bases: tuple[type[BaseException], ...]) -> type[PoolTimeout]:
    """``PoolTimeout`` that is also each of ``bases`` (one class per combination)."""
    cls = _timeout_classes.get(bases)
    if cls is None:
        cls = type("PoolTimeout", (PoolTimeout, *bases), {"__module__": __name__})
        _timeout_classes[bases] = cls
    return cls
