"""Pool metrics under the OpenTelemetry semantic-convention names, for Prometheus and for
OpenTelemetry.

* Prometheus: :class:`LidoCollector` (a ``prometheus_client`` collector) reports the host's
  pools, summed over every live process (from :func:`host_snapshot`), so whichever worker
  a scrape reaches answers for all of them; :func:`metrics` is a Django view serving it. The
  names are the OpenTelemetry ones as Prometheus spells them: dots become underscores, and
  ``prometheus_client`` adds the unit (``_seconds``) and a counter's ``_total``.
* OpenTelemetry: :func:`instrument_otel` registers observable instruments reporting this
  process's pools (each process exports its own, under its own resource). It is done at the
  first pool when ``opentelemetry-api`` is installed, with the global meter provider, unless
  the ``LIDO_OTEL`` setting or environment variable is false.

The three durations are histograms in the conventions. Prometheus gets them as histograms,
summed over the processes: ``stats()`` gives the count below each power of two from 16 µs
to 69 s (exact: they are the engine's bucket boundaries), so ``histogram_quantile()`` works
across workers. OpenTelemetry, whose API has no asynchronous histogram, gets gauges with a
``quantile`` attribute (``0.5``, ``0.9``, ``0.99``, ``1`` for the maximum) per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django_lido.observe import host, publish

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# What one metric reads from a pool's totals (see host._pool_totals): attributes -> value.
_Values = Callable[[dict[str, Any]], list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class Metric:
    name: str  # the OpenTelemetry name
    kind: str  # "updown", "counter" or "time" (a histogram in the conventions)
    unit: str  # the OpenTelemetry unit
    doc: str
    values: _Values | None = None  # None for "time": see host.HISTOGRAMS
    hist: str = ""  # for "time": the prefix in the totals (wait, use, create)


def _one(key: str) -> _Values:
    return lambda t: [({}, float(t[key]))]


METRICS: tuple[Metric, ...] = (
    Metric(
        "db.client.connection.count",
        "updown",
        "{connection}",
        "The number of connections that are currently in the state described by the state "
        "attribute (idle or used).",
        lambda t: [({STATE: "idle"}, float(t["idle"])), ({STATE: "used"}, float(t["in_use"]))],
    ),
    Metric(
        "db.client.connection.idle.max",
        "updown",
        "{connection}",
        "The maximum number of idle open connections allowed (max_size).",
        _one("max_size"),
    ),
    Metric(
        "db.client.connection.idle.min",
        "updown",
        "{connection}",
        "The minimum number of idle open connections allowed (min_size).",
        _one("min_size"),
    ),
    Metric(
        "db.client.connection.max",
        "updown",
        "{connection}",
        "The maximum number of open connections allowed (max_size).",
        _one("max_size"),
    ),
    Metric(
        "db.client.connection.pending_requests",
        "updown",
        "{request}",
        "The number of current pending requests for an open connection.",
        _one("waiting"),
    ),
    Metric(
        "db.client.connection.timeouts",
        "counter",
        "{timeout}",
        "The number of connection timeouts that have occurred trying to obtain a connection "
        "from the pool.",
        _one("timeouts"),
    ),
    Metric(
        "db.client.connection.create_time",
        "time",
        "s",
        "The time it took to create a new connection.",
        hist="create",
    ),
    Metric(
        "db.client.connection.wait_time",
        "time",
        "s",
        "The time it took to obtain an open connection from the pool.",
        hist="wait",
    ),
    Metric(
        "db.client.connection.use_time",
        "time",
        "s",
        "The time between borrowing a connection and returning it to the pool.",
        hist="use",
    ),
)


def prometheus_name(name: str) -> str:
    """An OpenTelemetry name as Prometheus spells it (without the unit suffix)."""
    return name.replace(".", "_")


# --- Prometheus --------------------------------------------------------------------------------


class LidoCollector:
    """A ``prometheus_client`` collector of the host's pools. ``snapshot`` (for tests and
    other layouts) replaces :func:`host_snapshot` as the source."""

    def __init__(
        self,
        runtime_dir: str | None = None,
        snapshot: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._snapshot = snapshot or (lambda: host.host_snapshot(runtime_dir))

    def describe(self) -> list[Any]:
        # Nothing at registration: describing would read every record.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        le = cast(Callable[[float], str], floatToGoString)  # untyped in prometheus_client
        pools = self._snapshot()["pools"]
        pool_label = prometheus_name(POOL_NAME)
        for m in METRICS:
            name = prometheus_name(m.name)
            if m.kind == "time":
                hist = HistogramMetricFamily(name, m.doc, labels=[pool_label], unit="seconds")
                for t in pools:
                    buckets = [(le(b), n) for b, n in t[f"{m.hist}_buckets"]]
                    buckets.append(("+Inf", t[f"{m.hist}_count"]))
                    hist.add_metric([t["name"]], buckets, t[f"{m.hist}_sum_ms"] / 1000.0)
                yield hist
                continue
            assert m.values is not None
            family: Any = None
            for t in pools:
                for attrs, value in m.values(t):
                    label_names = [pool_label, *(prometheus_name(k) for k in attrs)]
                    if family is None:
                        cls = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
                        family = cls(name, m.doc, labels=label_names)
                    family.add_metric([t["name"], *attrs.values()], value)
            if family is not None:
                yield family


def metrics(request: HttpRequest) -> HttpResponse:
    """The Django view: the host's pool metrics in Prometheus's text format (OpenMetrics
    when the scraper asks for it)."""
    from django.http import HttpResponse

    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
    except ImportError as e:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "the metrics view needs prometheus_client: pip install 'django-lido[prometheus]'"
        ) from e
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LidoCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


# --- OpenTelemetry -----------------------------------------------------------------------------

_QUANTILES = (("0.5", "p50_ms"), ("0.9", "p90_ms"), ("0.99", "p99_ms"), ("1", "max_ms"))


def _process_pools() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(totals, stats) of each open pool of this process."""
    out = []
    for pool in publish.open_pools():
        stats = pool.stats()
        (totals,) = host._pool_totals([{"pools": [{"name": pool.name, "stats": stats}]}])
        out.append((totals, stats))
    return out


def _observe(m: Metric) -> Callable[[Any], Iterable[Any]]:
    from opentelemetry.metrics import Observation

    def callback(options: Any) -> Iterable[Any]:
        out = []
        for totals, stats in _process_pools():
            pool = {POOL_NAME: totals["name"]}
            if m.kind == "time":
                h = stats.get(host.HISTOGRAMS[m.hist]) or {}
                for q, key in _QUANTILES:
                    out.append(Observation(h.get(key, 0.0) / 1000.0, {**pool, "quantile": q}))
                continue
            assert m.values is not None
            for attrs, value in m.values(totals):
                out.append(Observation(value, {**pool, **attrs}))
        return out

    return callback


def instrument_otel(meter_provider: Any = None) -> list[Any]:
    """Registers an observable instrument per metric on ``meter_provider`` (the global one
    by default) reporting this process's pools; returns the instruments ([] without
    ``opentelemetry-api``)."""
    try:
        from opentelemetry import metrics as otel
    except ImportError:
        return []
    from django_lido import __version__

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("django_lido", __version__)
    made = []
    for m in METRICS:
        create = {
            "updown": meter.create_observable_up_down_counter,
            "counter": meter.create_observable_counter,
            "time": meter.create_observable_gauge,
        }[m.kind]
        made.append(create(m.name, callbacks=[_observe(m)], unit=m.unit, description=m.doc))
    return made


_otel_lock = threading.Lock()
_otel_done = False


def auto_instrument_otel() -> None:
    """At the first pool: the OpenTelemetry instruments on the global meter provider, once
    per process, when ``opentelemetry-api`` is installed and ``LIDO_OTEL`` is not false."""
    global _otel_done
    with _otel_lock:
        if _otel_done:
            return
        _otel_done = True
        if not publish.flag("LIDO_OTEL"):
            return
        import importlib.util

        if importlib.util.find_spec("opentelemetry") is None:
            return
        instrument_otel()
