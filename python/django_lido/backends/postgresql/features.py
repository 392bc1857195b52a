"""Feature flags: Django's PostgreSQL features skip its connection health-check tests when
``OPTIONS["pool"]`` is set, because its native pool checks every checkout instead. Here
``CONN_HEALTH_CHECKS`` applies to connections kept across requests, so those tests run."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import features as stock
from django.utils.functional import cached_property

NATIVE_POOL_SKIP = "Pool does implicit health checks"


class PooledFeaturesMixin:
    @cached_property
    def django_test_skips(self) -> dict[str, Any]:
        skips = dict(super().django_test_skips)  # type: ignore[misc]
        skips.pop(NATIVE_POOL_SKIP, None)
        return skips


class DatabaseFeatures(PooledFeaturesMixin, stock.DatabaseFeatures):
    pass
