"""Test databases: every pooled connection to a database is closed before it is used as a
template or dropped, so PostgreSQL never answers "database is being accessed by other
users"."""

from __future__ import annotations

from django.db.backends.postgresql import creation as stock

from django_lido.backends import registry


class PooledCreationMixin:
    def _close_pools_for(self, database: str) -> None:
        self.connection.close()  # type: ignore[attr-defined]
        registry.close_for_database(self.connection.lido_vendor, database)  # type: ignore[attr-defined]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        self._close_pools_for(self.connection.settings_dict["NAME"])  # type: ignore[attr-defined]
        super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self._close_pools_for(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]


class DatabaseCreation(PooledCreationMixin, stock.DatabaseCreation):
    pass
