from __future__ import annotations

from collections.abc import Iterator

import pytest
from django_lido.testing.servers import ExistingPostgres, PostgresServer, postgres_for_tests


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: restarts, kills or otherwise disturbs a database server"
    )


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer | ExistingPostgres]:
    """The shared server: DATABASE_URL when set, else one throwaway cluster per session."""
    server = postgres_for_tests()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def pg_throwaway() -> Iterator[PostgresServer]:
    """A server this module owns outright, for tests that restart or kill it."""
    with PostgresServer() as server:
        yield server
