"""The metrics: the Prometheus view's output parses with prometheus_client's parsers, carries
the OpenTelemetry names and agrees with pool.stats() of real pools (summed over processes);
the OpenTelemetry instruments export through an in-memory reader."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

import itertools

from django_helpers import configure, database, unique
from django_lido import Pool, PoolTimeout
from django_lido.observe import metrics, publish
from observe_helpers import PoolChild
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

LABEL = "db_client_connection_pool_name"
# Every metric's family name as prometheus_client parses it back (a counter's family has
# no _total; the histograms keep their unit).
FAMILIES = {
    "db_client_connection_count",
    "db_client_connection_idle_max",
    "db_client_connection_idle_min",
    "db_client_connection_max",
    "db_client_connection_pending_requests",
    "db_client_connection_timeouts",
    "db_client_connection_create_time_seconds",
    "db_client_connection_wait_time_seconds",
    "db_client_connection_use_time_seconds",
}


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: Any) -> Iterator[Path]:
    configure(pg, default=database(pg))
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("LIDO_RUNTIME_DIR", str(d))
    publish.stop()
    yield d
    publish.stop()


def _scrape(accept: str = "") -> tuple[str, str]:
    from django.test import RequestFactory

    request = RequestFactory().get("/metrics", headers={"accept": accept} if accept else {})
    response = metrics.metrics(request)
    assert response.status_code == 200
    return response.content.decode(), response["Content-Type"]


def _samples(text: str, pool: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, other labels) -> value, for one pool."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get(LABEL) == pool:
                rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != LABEL))
                out[(s.name, rest)] = s.value
    return out


def _pool_with_a_timeout(pg: Any, name: str) -> tuple[Pool, Any]:
    """max_size 2: one connection held, one back idle, one checkout timed out."""
    pool = Pool(pg.conninfo(), name=name, max_size=2, timeout=5)
    a, b = pool.getconn(), pool.getconn()
    a.execute("SELECT 1")
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.05)
    pool.putconn(b)
    return pool, a


def test_the_view_parses_and_matches_stats(pg: Any, rundir: Path) -> None:
    name = unique("met")
    pool, held = _pool_with_a_timeout(pg, name)
    try:
        text, content_type = _scrape()
        stats = pool.stats()
    finally:
        pool.putconn(held)
        pool.close()
    assert content_type.startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families >= FAMILIES
    got = _samples(text, name)
    state = "db_client_connection_state"
    expect = {
        ("db_client_connection_count", ((state, "idle"),)): stats["idle"],
        ("db_client_connection_count", ((state, "used"),)): stats["in_use"],
        ("db_client_connection_max", ()): stats["pool_max"],
        ("db_client_connection_idle_max", ()): stats["pool_max"],
        ("db_client_connection_idle_min", ()): stats["pool_min"],
        ("db_client_connection_pending_requests", ()): stats["requests_waiting"],
        ("db_client_connection_timeouts_total", ()): stats["requests_timeouts"],
    }
    for prefix, key in (("create", "connection_open"), ("wait", "acquire_wait"), ("use", "usage")):
        family = f"db_client_connection_{prefix}_time_seconds"
        expect[(f"{family}_count", ())] = stats[key]["count"]
        expect[(f"{family}_sum", ())] = pytest.approx(stats[key]["sum_ms"] / 1000)  # type: ignore[assignment]
        for bound, n in stats[key]["buckets"]:
            expect[(f"{family}_bucket", (("le", floatToGoString(bound)),))] = n
        expect[(f"{family}_bucket", (("le", "+Inf"),))] = stats[key]["count"]
    assert {k: got.get(k) for k in expect} == expect
    # Histograms: 23 bounds from 2^14 ns to 2^36 ns, each count below the next.
    wait_buckets = stats["acquire_wait"]["buckets"]
    assert [b for b, _ in wait_buckets] == [2**k / 1e9 for k in range(14, 37)]
    assert all(x[1] <= y[1] for x, y in itertools.pairwise(wait_buckets))
    # The two checkouts that found a connection at once waited less than 16 µs.
    assert wait_buckets[0][1] >= 2
    # The values say what was done to the pool, not just what stats() says.
    assert (stats["idle"], stats["in_use"], stats["requests_timeouts"]) == (1, 1, 1)
    assert stats["usage"]["count"] == 1 and stats["connection_open"]["count"] == 2


def test_the_view_sums_the_processes_of_the_host(pg: Any, rundir: Path) -> None:
    name = unique("met_host")
    with PoolChild(pg.conninfo(), rundir, name, max_size=4, held=2):
        pool = Pool(pg.conninfo(), name=name, max_size=3)
        held = pool.getconn()
        try:
            text, _ = _scrape()
        finally:
            pool.putconn(held)
            pool.close()
    got = _samples(text, name)
    state = (("db_client_connection_state", "used"),)
    assert got[("db_client_connection_count", state)] == 3
    assert got[("db_client_connection_max", ())] == 7
    assert got[("db_client_connection_wait_time_seconds_count", ())] == 3
    # Buckets add up across the processes too: none of the three checkouts waited.
    lowest = (("le", floatToGoString(2**14 / 1e9)),)
    assert got[("db_client_connection_wait_time_seconds_bucket", lowest)] == 3
    assert got[("db_client_connection_wait_time_seconds_bucket", (("le", "+Inf"),))] == 3


def test_openmetrics_when_the_scraper_asks(pg: Any, rundir: Path) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as om_families,
    )

    name = unique("met_om")
    with Pool(pg.conninfo(), name=name, max_size=2) as pool, pool.connection():
        text, content_type = _scrape("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    by_name = {f.name: f for f in om_families(text)}
    assert by_name["db_client_connection_timeouts"].type == "counter"
    assert by_name["db_client_connection_wait_time_seconds"].unit == "seconds"
    used = [
        s.value
        for s in by_name["db_client_connection_count"].samples
        if s.labels.get(LABEL) == name and s.labels["db_client_connection_state"] == "used"
    ]
    assert used == [1]


def _otel_points(reader: Any, pool: str) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
    out = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    attrs = dict(p.attributes)
                    if attrs.pop(metrics.POOL_NAME, None) == pool:
                        out[(m.name, tuple(sorted(attrs.items())))] = p.value
    return out


def test_opentelemetry_instruments_export_through_a_reader(pg: Any, rundir: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = metrics.instrument_otel(provider)
    assert len(instruments) == len(metrics.METRICS)
    name = unique("met_otel")
    pool, held = _pool_with_a_timeout(pg, name)
    try:
        points = _otel_points(reader, name)
        stats = pool.stats()
    finally:
        pool.putconn(held)
        pool.close()
        provider.shutdown()
    state = metrics.STATE
    assert points[("db.client.connection.count", ((state, "idle"),))] == stats["idle"] == 1
    assert points[("db.client.connection.count", ((state, "used"),))] == stats["in_use"] == 1
    assert points[("db.client.connection.max", ())] == 2
    assert points[("db.client.connection.idle.min", ())] == 0
    assert points[("db.client.connection.pending_requests", ())] == 0
    assert points[("db.client.connection.timeouts", ())] == 1
    p99 = points[("db.client.connection.create_time", (("quantile", "0.99"),))]
    assert p99 == pytest.approx(stats["connection_open"]["p99_ms"] / 1000)
    assert p99 > 0, "opening a connection to a real server takes time"


def test_opentelemetry_is_instrumented_at_the_first_pool(pg: Any, tmp_path: Path) -> None:
    """With the SDK's provider set globally, a process's first pool registers the
    instruments by itself; LIDO_OTEL=0 keeps them out."""
    pytest.importorskip("opentelemetry.sdk")
    script = textwrap.dedent(
        """
        import sys, signal
        signal.alarm(50)
        from opentelemetry import metrics as otel
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
        from django_lido import Pool
        with Pool(sys.argv[1], name="auto", max_size=5) as pool:
            names = {
                m.name
                for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            } if reader.get_metrics_data() else set()
            print(sorted(names))
        """
    )
    env = {**os.environ, "LIDO_RUNTIME_DIR": str(tmp_path)}
    outputs = []
    for otel in ("1", "0"):
        out = subprocess.run(
            [sys.executable, "-c", script, pg.conninfo()],
            env={**env, "LIDO_OTEL": otel},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout.strip())
    assert outputs[0] == str(sorted(m.name for m in metrics.METRICS))
    assert outputs[1] == "[]"
