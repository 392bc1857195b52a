from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.servers import ExistingPostgres, PostgresServer, postgres_for_tests


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: restarts, kills or otherwise disturbs a database server"
    )
    config.addinivalue_line("markers", "slow: takes minutes rather than seconds")
    config.addinivalue_line(
        "markers",
        "django_suite: runs Django's own test suite (see harness.django_suite)",
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
