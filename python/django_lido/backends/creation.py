"""Test databases with pools open: every pooled connection to a database is closed before
the database is dropped, re-created or cloned. PostgreSQL otherwise refuses ("database is
being accessed by other users"); MySQL's DROP DATABASE waits for the metadata locks that
sessions using its tables hold.

Making a test database also marks the process as in a test run, where ``leak_threshold``
defaults to off (``pool_options.test_run``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django_lido.backends import pool_options, registry

if TYPE_CHECKING:
    from django.db.backends.base.creation import BaseDatabaseCreation

    from django_lido.backends.pooled import PooledDatabaseMixin

    class _Creation(BaseDatabaseCreation):
        """Django's creation class as the mixin uses it, with the private steps that
        django-stubs leaves out."""

        def _get_test_db_name(self) -> str: ...
        def _create_test_db(
            self, verbosity: int, autoclobber: bool, keepdb: bool = False
        ) -> str: ...
        def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None: ...
        def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None: ...

else:
    _Creation = object


class PooledCreationMixin(_Creation):
    """Mixed in front of a stock ``DatabaseCreation``."""

    def _close_pools_for(self, *databases: str) -> None:
        wrapper = cast("PooledDatabaseMixin", self.connection)
        wrapper.close()
        for database in databases:
            registry.close_for_database(wrapper.lido_vendor, database)

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> str:
        pool_options.test_run = True
        if not keepdb:  # an old test database of that name may be dropped first
            self._close_pools_for(self._get_test_db_name())
        return super()._create_test_db(verbosity, autoclobber, keepdb)

    def setup_worker_connection(self, _worker_id: int) -> None:
        # A parallel test run's worker (spawned ones do not inherit the flag).
        pool_options.test_run = True
        super().setup_worker_connection(_worker_id)

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        self._close_pools_for(
            self.connection.settings_dict["NAME"],
            self.get_test_db_clone_settings(suffix)["NAME"],
        )
        super()._clone_test_db(suffix, verbosity, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self._close_pools_for(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)
