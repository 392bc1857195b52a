"""Test databases with pools open: every pooled connection to a database is closed before
the database is dropped, re-created or cloned. PostgreSQL otherwise refuses ("database is
being accessed by other users"); MySQL's DROP DATABASE waits for the metadata locks that
sessions using its tables hold."""

from __future__ import annotations

from django_lido.backends import registry


class PooledCreationMixin:
    """Mixed in front of a stock ``DatabaseCreation``."""

    def _close_pools_for(self, *databases: str) -> None:
        self.connection.close()  # type: ignore[attr-defined]
        for database in databases:
            registry.close_for_database(self.connection.lido_vendor, database)  # type: ignore[attr-defined]

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> str:
        if not keepdb:  # an old test database of that name may be dropped first
            self._close_pools_for(self._get_test_db_name())  # type: ignore[attr-defined]
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc, no-any-return]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        self._close_pools_for(
            self.connection.settings_dict["NAME"],  # type: ignore[attr-defined]
            self.get_test_db_clone_settings(suffix)["NAME"],  # type: ignore[attr-defined]
        )
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self._close_pools_for(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
