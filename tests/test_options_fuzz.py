"""Random pool options, as a user might type them: every set is either accepted with values
within the table's bounds, or refused with TypeError/ValueError (ImproperlyConfigured from
Django settings) naming the option. Accepted sets build a pool that lends a connection and
takes it back; nothing panics, hangs or raises anything else."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django_lido import Pool, PoolOptions
from django_lido.backends.pool_options import pool_settings
from django_lido.options import OPTIONS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

values = st.one_of(
    st.integers(-5, 40),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 5),
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
)
option_sets = st.dictionaries(st.sampled_from([*OPTIONS, "max_sise", "kwargs"]), values, max_size=5)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeConn:
    """Enough of a DB-API connection for the generic driver hooks."""

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _same(given: Any, kept: Any) -> bool:
    if isinstance(given, float) or isinstance(kept, float):
        return math.isclose(float(given), float(kept), rel_tol=1e-9, abs_tol=1e-9)
    return given == kept


@FUZZ
@given(option_sets)
def test_pool_options_are_accepted_within_bounds_or_refused_by_name(opts: dict[str, Any]) -> None:
    try:
        checked = PoolOptions(**opts)
    except (TypeError, ValueError) as exc:
        named = [k for k in opts if k in str(exc)]
        assert named, f"{exc!r} names none of {sorted(opts)}"
        return
    kept = checked.as_dict()
    for key, value in opts.items():
        assert type(value) is not bool or OPTIONS[key].kind == "flag"
        assert _same(value, kept[key]), (key, value, kept[key])
    with Pool(FakeConn, options=checked, check=lambda c: None) as pool:
        conn = pool.getconn(timeout=5.0)
        pool.putconn(conn)
        assert pool.stats()["in_use"] == 0


@FUZZ
@given(option_sets)
def test_django_pool_settings_are_accepted_or_improperly_configured(opts: dict[str, Any]) -> None:
    try:
        ps = pool_settings("default", {"pool": opts})
    except ImproperlyConfigured as exc:
        assert "DATABASES['default']['OPTIONS']" in str(exc)
        return
    assert ps is not None
    assert 1 <= ps.options["max_size"] <= 10_000
    assert ps.options["min_size"] <= ps.options["max_size"]
