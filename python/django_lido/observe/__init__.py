"""Observability across the processes of a host.

Each process with pools publishes a record of them to a runtime directory
(:mod:`django_lido.observe.publish`); :func:`host_snapshot` reads every live process's
record (:mod:`django_lido.observe.host`), and the metrics (:mod:`django_lido.observe.metrics`),
``manage.py lido`` and the dashboard show it.
"""

from __future__ import annotations

from django_lido.observe.host import host_snapshot
from django_lido.observe.publish import runtime_dir

__all__ = ["host_snapshot", "pool_created", "runtime_dir"]


def pool_created() -> None:
    """Called for every new pool: starts this process's publisher and, where OpenTelemetry
    is installed, its instruments (each once)."""
    from django_lido.observe import metrics, publish

    publish.ensure_started()
    try:
        metrics.auto_instrument_otel()
    except Exception:  # a broken OpenTelemetry install must not stop pools being made
        publish.logger.warning("could not register the OpenTelemetry instruments", exc_info=True)
