"""Django under ASGI: a real ``uvicorn`` and a real ``daphne``, each serving a tiny project
(async views using the async ORM, sync views) on a throwaway PostgreSQL, under bounded load,
at ``CONN_MAX_AGE`` 0 and 60; each test runs against both servers.

Each request's sync code runs in a thread of its own (Django's per-request
``ThreadSensitiveContext``), so a connection kept after the request would strand there;
with the pool every request must give its connection back, whatever ``CONN_MAX_AGE``.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_helpers import LIDO_ENGINE, unique

from harness.asgi_server import (
    TABLE_SQL,
    AsgiServer,
    DaphneServer,
    ServerConnections,
    UvicornServer,
    drive,
    hang_up,
    stats,
    write_project,
)
from harness.django_db import postgres_entry

# The servers run as subprocesses and are not imported here (only looked up, to skip one
# that is not installed): an ASGI server loaded in the test process would change what the
# system checks of other test modules find.
SERVERS: dict[str, type[AsgiServer]] = {"uvicorn": UvicornServer, "daphne": DaphneServer}


def server_param(name: str) -> Any:
    missing = importlib.util.find_spec(name) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} is not installed"))


MAX_SIZE = 4


@pytest.fixture(scope="module")
def table(pg: Any) -> Any:
    pg.execute(TABLE_SQL)
    return pg


def entry(pg: Any, app: str, conn_max_age: int | None) -> dict[str, Any]:
    pool = {"max_size": MAX_SIZE, "timeout": 5}
    return postgres_entry(pg, engine=LIDO_ENGINE, app=app, conn_max_age=conn_max_age, pool=pool)


@pytest.fixture(params=[server_param(name) for name in SERVERS])
def server_kind(request: pytest.FixtureRequest) -> type[AsgiServer]:
    return SERVERS[request.param]


@pytest.fixture
def served(
    request: pytest.FixtureRequest, server_kind: type[AsgiServer], table: Any, tmp_path: Path
) -> Iterator[Any]:
    conn_max_age = request.param
    app = unique("lido_asgi")
    write_project(tmp_path, database=entry(table, app, conn_max_age))
    server = server_kind(tmp_path)
    with server:
        yield server, app
    print(server.log_tail())


@pytest.mark.parametrize("served", [0, 60], indirect=True, ids=["age0", "age60"])
def test_async_and_sync_views_give_every_connection_back(served: Any, table: Any) -> None:
    server, app = served
    with ServerConnections(table, app) as seen:
        load = drive(
            server.port,
            ["/async_orm", "/sync_orm"],
            requests=200,
            concurrency=20,
            request_timeout=10,
            deadline=40,
        )
    print(load.summary(), f"peak server connections {seen.peak}")
    assert load.finished, load.summary()
    assert load.ok == load.sent == 200, (load.summary(), load.errors, server.log_tail())
    assert 0 < seen.peak <= MAX_SIZE
    # The last responses may be on their way before their request has ended.
    deadline = time.monotonic() + 5
    while (s := stats(server.port))["in_use"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s["in_use"] == 0, s
    assert s["connections_leaked"] == 0, s
    assert s["connections_num"] <= MAX_SIZE, s


@pytest.mark.parametrize("served", [60], indirect=True, ids=["age60"])
def test_clients_that_hang_up_mid_request_leave_no_connection_behind(
    served: Any, table: Any
) -> None:
    server, app = served
    # 12 clients hang up while their view (async: cancelled; sync: runs on) holds a
    # connection, on a pool of 4; then ordinary load must get every slot.
    hang = [
        threading.Thread(target=hang_up, args=(server.port, path, 0.2), daemon=True)
        for path in ["/slow_async?s=0.6", "/slow_sync?s=0.6"] * 6
    ]
    with ServerConnections(table, app) as seen:
        for t in hang:
            t.start()
        for t in hang:
            t.join(10)
        load = drive(
            server.port, ["/async_orm", "/sync_orm"], requests=40, concurrency=8, deadline=30
        )
    print(load.summary(), f"peak server connections {seen.peak}")
    assert not any(t.is_alive() for t in hang)
    assert load.finished and load.ok == load.sent == 40, (load.summary(), server.log_tail())
    assert seen.peak <= MAX_SIZE
    deadline = time.monotonic() + 5
    while (s := stats(server.port))["in_use"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s["in_use"] == 0 and s["connections_leaked"] == 0, s
