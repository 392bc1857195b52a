"""PostgreSQL on the pool, with psycopg 3 or psycopg2 (picked the way Django picks them).

``ENGINE: "django_lido.backends.postgresql"``; pool options go in ``OPTIONS["pool"]`` (see
``django_lido.backends.pool_options``), every other OPTIONS key to the driver as before.

Per physical connection, once: connect in autocommit, ``SET ROLE`` for ``assume_role``.
Per checkout, with no round trip unless a setting changed: the time zone is compared with
the one the server last reported and set only if it differs, and Django's own checkout
steps (autocommit, isolation level) are local to the driver.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as stock
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from django_lido.backends import checks, registry
from django_lido.backends.pool_options import PoolSettings
from django_lido.backends.pooled import Opener, PooledDatabaseMixin, freeze
from django_lido.backends.postgresql.creation import DatabaseCreation
from django_lido.backends.postgresql.features import DatabaseFeatures
from django_lido.backends.postgresql.session import Session
from django_lido.backends.session import hold_cursor_opened
from django_lido.drivers import Conn
from django_lido.drivers.postgres import libpq_connect_params, restore_user_timeout

if not is_psycopg3:
    from psycopg2.extras import register_default_jsonb


def _text(value: str) -> str:
    return value


# psycopg's own default: a query is prepared on the server after this many executions.
PSYCOPG_PREPARE_THRESHOLD = 5


class PostgresPoolMixin(PooledDatabaseMixin):
    """PostgreSQL specifics of pooling; mixed in front of a stock PostgreSQL wrapper."""

    lido_vendor = "postgresql"

    if TYPE_CHECKING:
        # Django's PostgreSQL wrapper has these; django-stubs does not declare them.
        isolation_level: Any

        def _configure_timezone(self, connection: Conn) -> bool: ...

    def _lido_timeout_bases(self) -> tuple[type[BaseException], ...]:
        # Code written for Django's native pool catches psycopg_pool.PoolTimeout (itself a
        # psycopg OperationalError).
        if is_psycopg3:
            try:
                from psycopg_pool import PoolTimeout as NativePoolTimeout
            except ImportError:
                pass
            else:
                return (NativePoolTimeout,)
        return super()._lido_timeout_bases()

    def _lido_build_connection_params(self) -> dict[str, Any]:
        params = super()._lido_build_connection_params()
        options = self.settings_dict["OPTIONS"]
        if is_psycopg3 and self.alias != NO_DB_ALIAS:
            settings = self._lido_settings()
            if settings is not None:
                if settings.transaction_pooler:
                    # Prepared statements live in one server session; behind a transaction
                    # pooler the next statement may run in another.
                    params["prepare_threshold"] = None
                elif "prepare_threshold" not in options:
                    params["prepare_threshold"] = PSYCOPG_PREPARE_THRESHOLD
        return params

    def _lido_target(self, conn_params: dict[str, Any]) -> registry.Target:
        return registry.Target(
            vendor=self.lido_vendor,
            host=str(conn_params.get("host") or ""),
            port=str(conn_params.get("port") or ""),
            database=str(conn_params.get("dbname") or ""),
        )

    def _lido_key(self, conn_params: dict[str, Any]) -> Hashable:
        options = self.settings_dict["OPTIONS"]
        # The adapters context follows TIME_ZONE; Django's create_cursor() copes with a
        # connection opened under another one, so it does not split pools.
        params = {k: v for k, v in conn_params.items() if k != "context"}
        return (
            self.Database.__name__,
            freeze(params),
            options.get("assume_role"),
            options.get("isolation_level"),
        )

    def _lido_opener(self, conn_params: dict[str, Any], settings: PoolSettings) -> Opener:
        # Nothing here may refer to ``self``: the pool outlives this thread's wrapper.
        connect = self.Database.connect
        session = Session(
            role=self.settings_dict["OPTIONS"].get("assume_role"),
            psycopg3=is_psycopg3,
        )

        def open_connection(timeout: float | None = None) -> Conn:
            # Keepalives and a TCP user timeout unless OPTIONS set them; the connect ends
            # within ``timeout`` (the checkout's time left).
            extra = libpq_connect_params(conn_params, timeout)
            if is_psycopg3:
                conn = connect(**conn_params, **extra, autocommit=True)
            else:
                conn = connect(**conn_params, **extra)
            try:
                restore_user_timeout(conn, conn_params)
            except BaseException:
                conn.close()
                raise
            return conn

        def set_up(conn: Conn) -> None:
            if not is_psycopg3:
                conn.autocommit = True
                # What Django's stock get_new_connection does at every connect (jsonb left
                # as text, for JSONField's own decoder); once per connection here.
                register_default_jsonb(conn_or_curs=conn, loads=_text)
            session.set_up(conn)

        return Opener(open_connection, set_up, session.reset_hook(settings.reset))

    def _lido_after_checkout(self, conn: Conn) -> None:
        # The stock get_new_connection's step for a pooled connection: the isolation level
        # OPTIONS names (self.isolation_level was set from the same OPTIONS by the connect
        # that made the pool).
        if "isolation_level" in self.settings_dict["OPTIONS"]:
            conn.isolation_level = self.isolation_level

    def ensure_timezone(self) -> bool:
        # Django's pooled backend closes its whole pool here (tests change TIME_ZONE);
        # pooled connections here are put right at their next checkout instead.
        if self.connection is None:
            return False
        return self._configure_timezone(self.connection)

    def init_connection_state(self) -> None:
        if self._lido_conn_pool is None:
            super().init_connection_state()
            return
        BaseDatabaseWrapper.init_connection_state(self)
        # A local comparison with the time zone the server last reported; a round trip
        # only when it differs (a new connection, or TIME_ZONE changed).
        conn = self.connection
        if is_psycopg3:
            name = self.timezone_name
            reported = conn.pgconn.parameter_status(b"TimeZone")
            if not name or (reported is not None and reported.decode() == name):
                return
        if self._configure_timezone(conn) and not self.get_autocommit():
            conn.commit()

    def _set_autocommit(self, autocommit: bool) -> None:
        # Django sets autocommit at every connect, so at every checkout; a pooled
        # connection usually has the right mode already (the flag is local to the driver).
        conn = self.connection
        if self._lido_conn_pool is not None and conn.autocommit == autocommit:
            return
        super()._set_autocommit(autocommit)

    def lido_server_connection_limit(self) -> int | None:
        """How many connections the server accepts for this user and database (the
        tightest of max_connections less the reserved ones, the role's and the database's
        CONNECTION LIMIT)."""
        with self.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int,"
                " (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),"
                " (SELECT datconnlimit FROM pg_database WHERE datname = current_database())"
            )
            limits = [n for n in cursor.fetchone() if n is not None and n >= 0]
        return min(limits) if limits else None

    def chunked_cursor(self) -> Any:
        settings = self._lido_settings()
        if settings is not None and settings.transaction_pooler:
            # A named (server-side) cursor outlives the transaction that a transaction
            # pooler ties to one server connection.
            return self._cursor()
        cursor = super().chunked_cursor()
        if getattr(cursor.cursor, "withhold", False) and self._lido_conn_pool is not None:
            # Django declares its server-side cursors WITH HOLD in autocommit mode; one
            # left open would outlive the transaction, and the holder. The connection is
            # marked until it comes back with them all closed (``_close``).
            hold_cursor_opened(self.connection)
            self._lido_hold_cursors = [*self._lido_hold_cursors, cursor.cursor]
        return cursor


class DatabaseWrapper(PostgresPoolMixin, stock.DatabaseWrapper):
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures


checks.register()
