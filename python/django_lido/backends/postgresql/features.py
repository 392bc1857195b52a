"""Feature flags: Django's PostgreSQL features skip its connection health-check tests when
``OPTIONS["pool"]`` is set, because its native pool checks every checkout instead. Here
``CONN_HEALTH_CHECKS`` applies to connections kept across requests, so those tests run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.backends.postgresql import features as stock
from django.utils.functional import cached_property

if TYPE_CHECKING:
    from django.db.backends.base.features import BaseDatabaseFeatures as _Features
else:
    _Features = object

NATIVE_POOL_SKIP = "Pool does implicit health checks"


class PooledFeaturesMixin(_Features):
    # A cached_property, as in Django's own features classes (its stubs say attribute).
    @cached_property
    def django_test_skips(self) -> dict[str, Any]:  # type: ignore[override]
        skips = dict(super().django_test_skips)
        skips.pop(NATIVE_POOL_SKIP, None)
        return skips


class DatabaseFeatures(PooledFeaturesMixin, stock.DatabaseFeatures):
    pass
