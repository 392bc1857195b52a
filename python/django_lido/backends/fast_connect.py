"""The short connect path of ``PooledDatabaseMixin``.

Checkout is on every request's path, so once a wrapper has connected through Django's own
``connect()`` with the current settings, later connects take a shorter way (``connect``
below): the same state resets and steps, without rebuilding what only the settings decide.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings as django_settings
from django.db.backends.signals import connection_created
from django.utils.asyncio import async_unsafe

from django_lido.backends.pool_options import CONSUMED_KEYS, driver_options
from django_lido.errors import PoolTimeout
from django_lido.pool import Pool


class FastConnectMixin:
    """Django's ``connect()`` made short for a wrapper whose settings are unchanged."""

    # Cache of the last look-up, checked on each connect: (what the connection parameters
    # depend on, OPTIONS, the parameters).
    _lido_params_cache: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]] | None = None
    # (the parameters, their pool) of the last connect that went Django's whole way.
    _lido_warm: tuple[dict[str, Any], Pool] | None = None

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

    def get_connection_params(self) -> dict[str, Any]:
        # Django builds the parameters on every connect, that is at every checkout; they
        # change only with the settings, so the last result is reused (the same object)
        # while what goes into it compares equal: a few fields, OPTIONS (the pool settings
        # included) and the time zone.
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
        )
        cached = self._lido_params_cache
        if cached is not None and cached[0] == fingerprint and cached[1] == options:
            return cached[2]
        params = self._lido_build_connection_params()
        # Nested dicts copied too, so that a change made in place to OPTIONS["pool"] is
        # seen by the comparison above.
        copied = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
        self._lido_params_cache = (fingerprint, copied, params)
        return params

    @async_unsafe
    def connect(self) -> None:
        # Django's connect() costs about as much again as the pool's checkout and return
        # together (some 40 Python calls: the parameters, the pool property three times, its
        # open(), ...). Once this wrapper has connected with the current settings, the same
        # pool serves them: this path makes Django's resets in the same order, takes the
        # connection and does the stock per-checkout steps (``_lido_after_checkout``), then
        # Django's autocommit and connection-state steps and its signal, as connect() does.
        pool = self._lido_warm_pool()
        if pool is None:
            super().connect()  # type: ignore[misc]
            if self._lido_conn_pool is not None and _short_path_allowed(type(self)):
                self._lido_warm = self._lido_pool_cache
            return
        settings_dict = self.settings_dict  # type: ignore[has-type]
        self.in_atomic_block = False
        self.savepoint_ids: list[Any] = []
        self.atomic_blocks: list[Any] = []
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
            raise _timeout_class(self._lido_timeout_bases())(*exc.args) from None
        self.connection = conn
        self._lido_conn_pool = pool
        self._lido_after_checkout(conn)
        autocommit = settings_dict["AUTOCOMMIT"]
        if autocommit and not self.run_commit_hooks_on_set_autocommit_on:  # type: ignore[has-type]
            # All that set_autocommit(True) does right after the resets above, connected,
            # outside any atomic block, with its health check done and no hooks to run.
            self._set_autocommit(True)  # type: ignore[attr-defined]
            self.autocommit = True
        else:
            self.set_autocommit(autocommit)  # type: ignore[attr-defined]
        self.init_connection_state()  # type: ignore[attr-defined]
        if connection_created.receivers:
            connection_created.send(sender=self.__class__, connection=self)
        self.run_on_commit: list[Any] = []

    def _lido_warm_pool(self) -> Pool | None:
        """The pool of the last connect through Django's own connect() if the current
        settings still use it, else None (then Django's connect() runs again)."""
        cached = self._lido_warm
        if cached is None:
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
        self.check_settings()  # type: ignore[attr-defined]
        # The same object while the settings are unchanged (get_connection_params).
        if cached[0] is not self.get_connection_params() or cached[1].closed:
            return None
        return cached[1]


_short_path: dict[type, bool] = {}


def _short_path_allowed(cls: type) -> bool:
    """Whether ``cls`` connects with the steps its backend's ``_lido_after_checkout`` was
    written for: those of the django-lido ``DatabaseWrapper`` it is or derives from. A
    subclass that replaces one of ``LIDO_CONNECT_STEPS`` always connects the long way."""
    allowed = _short_path.get(cls)
    if allowed is None:
        shipped = next(k for k in cls.__mro__ if k.__module__.startswith(_BACKENDS_PACKAGE))
        steps: tuple[str, ...] = cls.LIDO_CONNECT_STEPS  # type: ignore[attr-defined]
        allowed = all(getattr(cls, name) is getattr(shipped, name) for name in steps)
        _short_path[cls] = allowed
    return allowed


_BACKENDS_PACKAGE = __name__.rpartition(".")[0] + "."


_timeout_classes: dict[tuple[type[BaseException], ...], type[PoolTimeout]] = {}


def _timeout_class(bases: tuple[type[BaseException], ...]) -> type[PoolTimeout]:
    """``PoolTimeout`` that is also each of ``bases`` (one class per combination)."""
    cls = _timeout_classes.get(bases)
    if cls is None:
        cls = type("PoolTimeout", (PoolTimeout, *bases), {"__module__": __name__})
        _timeout_classes[bases] = cls
    return cls
