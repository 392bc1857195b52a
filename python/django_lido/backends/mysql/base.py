"""MySQL and MariaDB on the pool, with mysqlclient or PyMySQL (``pymysql.install_as_MySQLdb()``),
whichever Django's stock backend imports as ``MySQLdb``.

``ENGINE: "django_lido.backends.mysql"``; pool options go in ``OPTIONS["pool"]`` (see
``django_lido.backends.pool_options``), every other OPTIONS key to the driver as before.

Per physical connection, once: connect with autocommit on, then ``sql_auto_is_null = 0`` and
the isolation level in one statement (Django's stock backend sends them at every connect).
Per checkout nothing is sent: Django's autocommit step compares with the server status the
driver already has. See ``session.py`` for what happens on return.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.mysql import base as stock

from django_lido.backends import checks, registry
from django_lido.backends.mysql.creation import DatabaseCreation
from django_lido.backends.mysql.session import Session
from django_lido.backends.pool_options import PoolSettings
from django_lido.backends.pooled import Opener, PooledDatabaseMixin, freeze
from django_lido.drivers import Conn, driver_for
from django_lido.drivers.mysql import mysql_network_params, tune_mysql_socket


class MySQLPoolMixin(PooledDatabaseMixin):
    """MySQL specifics of pooling; mixed in front of a stock MySQL wrapper."""

    lido_vendor = "mysql"
    # Django's MySQL backend has no pool: the mixin takes connections from ours itself.
    lido_stock_uses_pool = False
    # Set while Django connects: the session of a pooled connection is set up already.
    _lido_checked_out = False

    if TYPE_CHECKING:
        isolation_level: str | None  # set by Django's get_connection_params

    def _lido_driver_name(self) -> str:
        # "MySQLdb" for mysqlclient; "pymysql" after pymysql.install_as_MySQLdb().
        return str(self.Database.__name__)

    def _lido_target(self, conn_params: dict[str, Any]) -> registry.Target:
        return registry.Target(
            vendor=self.lido_vendor,
            host=str(conn_params.get("unix_socket") or conn_params.get("host") or ""),
            port=str(conn_params.get("port") or ""),
            database=str(conn_params.get("database") or conn_params.get("db") or ""),
        )

    def _lido_key(self, conn_params: dict[str, Any]) -> Hashable:
        # Django's converters dict is the same object for every wrapper: no need to hash it.
        params = {
            k: ("django" if k == "conv" and v is stock.django_conversions else v)
            for k, v in conn_params.items()
        }
        return (
            self._lido_driver_name(),
            freeze(params),
            self.isolation_level,
        )

    def _lido_opener(self, conn_params: dict[str, Any], settings: PoolSettings) -> Opener:
        # Nothing here may refer to ``self``: the pool outlives this thread's wrapper.
        connect = self.Database.connect
        session = Session(
            driver=self._lido_driver_name(),
            params=conn_params,
            isolation_level=self.isolation_level,
        )
        if settings.reset == "full" and not session.can_reset:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS']['pool']['reset']='full' needs "
                "COM_RESET_CONNECTION, which this mysqlclient cannot send (it is not built "
                "on MariaDB Connector/C); use PyMySQL, or reset='auto' or 'rollback'"
            )
        # Django turns autocommit on at every checkout; a connection opened with it on
        # makes that a no-op (the drivers otherwise switch it off at connect).
        params = conn_params if "autocommit" in conn_params else {**conn_params, "autocommit": True}
        pymysql = self._lido_driver_name() == "pymysql"

        def open_connection(timeout: float | None = None) -> Conn:
            # A write timeout unless OPTIONS set one; the connect ends within ``timeout``
            # (the checkout's time left).
            conn = connect(**params, **mysql_network_params(params, timeout, pymysql=pymysql))
            try:
                tune_mysql_socket(driver_for(conn).fileno(conn), params)
            except BaseException:
                conn.close()
                raise
            return conn

        def set_up(conn: Conn) -> None:
            # What Django's stock get_new_connection does (Django < 6.0): mysqlclient's
            # bytes encoder is broken.
            encoders = getattr(conn, "encoders", None)
            if encoders is not None and encoders.get(bytes) is bytes:
                encoders.pop(bytes)
            session.set_up(conn)

        return Opener(open_connection, set_up, session.reset_hook(settings.reset))

    def get_new_connection(self, conn_params: dict[str, Any]) -> Conn:
        conn = super().get_new_connection(conn_params)
        self._lido_checked_out = self._lido_conn_pool is not None
        return conn

    def _lido_after_checkout(self, conn: Conn) -> None:
        self._lido_checked_out = True

    def init_connection_state(self) -> None:
        # Django calls this right after get_new_connection(). For a pooled connection the
        # session was set up when the physical connection was opened; any other call (a
        # direct one) sets it up as Django's stock backend does.
        if not self._lido_checked_out:
            super().init_connection_state()
            return
        self._lido_checked_out = False
        BaseDatabaseWrapper.init_connection_state(self)

    def is_usable(self) -> bool:
        # After close() the pooled connection is the pool's again (as with Django's
        # PostgreSQL pool, whose is_usable() has the same test).
        if self.connection is None:
            return False
        return bool(super().is_usable())

    def lido_server_connection_limit(self) -> int | None:
        """How many connections the server accepts for this user: the tightest of
        ``max_connections`` and ``max_user_connections`` (whose session value is the
        account's own limit when it has one)."""
        with self.cursor() as cursor:
            cursor.execute("SELECT @@max_connections, @@max_user_connections")
            limits = [n for n in cursor.fetchone() if n is not None and n > 0]
        return min(limits) if limits else None


class DatabaseWrapper(MySQLPoolMixin, stock.DatabaseWrapper):
    creation_class = DatabaseCreation


checks.register()
