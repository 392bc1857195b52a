"""Stock against ours: what passed with the stock backend must pass with ours."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.django_suite.parse import PASSED
from harness.django_suite.run import SuiteResult

# Tests (ids "module.Class.test") that may pass with stock but not with ours, each with the
# reason the difference is intended; every entry is a documented divergence, so keep it short.
# Tests of Django's whose subject is a behaviour of Django's native pool that our backends
# change on purpose (docs/django.md), or that cannot run under another ENGINE path.
_PG = "backends.postgresql.tests.Tests."
ACCEPTED_DIFFERENCES: dict[str, str] = {
    "gis_tests.inspectapp.tests.OGRInspectTest.test_time_field": (
        "the test maps only Django's own ENGINE paths to a GDAL/OGR driver and skips otherwise"
    ),
    _PG + "test_pooling_not_support_persistent_connections": (
        "Django's native pool refuses CONN_MAX_AGE; ours gives it a meaning (how long a thread "
        "keeps its pooled connection across requests)"
    ),
    _PG + "test_connect_pool_setting_ignored_for_psycopg2": (
        "Django's native pool refuses psycopg2; ours pools psycopg2 too"
    ),
    _PG + "test_pooling_health_checks": (
        "reads psycopg_pool's private ConnectionPool._check; our pool probes every checkout"
    ),
    _PG + "test_pool_check_can_be_overridden": (
        "reads psycopg_pool's private ConnectionPool._check (our pool takes the same `check` "
        "option, tested in tests/test_django_backend.py)"
    ),
}


@dataclasses.dataclass
class Comparison:
    """How ours fared on the tests that passed with the stock backend."""

    regressions: dict[str, tuple[str, str]]  # test id -> (stock outcome, our outcome)
    missing: list[str]  # passed with stock, absent from our run
    fixed: list[str]  # did not pass with stock, passed with ours (informational)
    stock_not_passing: dict[str, str]  # not counted against ours
    accepted: dict[str, tuple[str, str, str]]  # accepted differences: (stock, ours, reason)

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.missing

    def report(self) -> str:
        lines = [
            f"regressions: {len(self.regressions)}, missing: {len(self.missing)}, "
            f"not passing with stock (ignored): {len(self.stock_not_passing)}, "
            f"passing only with ours: {len(self.fixed)}"
        ]
        lines += [
            f"  REGRESSION {t}: stock {s}, ours {o}" for t, (s, o) in self.regressions.items()
        ]
        lines += [f"  MISSING {t}" for t in self.missing]
        lines += [
            f"  accepted {t}: stock {s}, ours {o} ({r})" for t, (s, o, r) in self.accepted.items()
        ]
        lines += [f"  stock {o}: {t}" for t, o in self.stock_not_passing.items()]
        return "\n".join(lines)


def _outcomes(result: SuiteResult | Mapping[str, str]) -> Mapping[str, str]:
    return result.outcomes if isinstance(result, SuiteResult) else result


def compare(
    stock_results: SuiteResult | Mapping[str, str],
    ours_results: SuiteResult | Mapping[str, str],
    accepted: Mapping[str, str] | None = None,
) -> Comparison:
    """Tests that passed (ok or expected failure) with stock but not with ours (a skip counts
    as not passing), and those missing from our run. ``accepted`` maps test ids whose
    difference is intended to the reason; they are reported but are no regressions."""
    stock, ours = _outcomes(stock_results), _outcomes(ours_results)
    accepted = accepted or {}
    regressions, missing, accepted_diffs = {}, [], {}
    for test, outcome in sorted(stock.items()):
        if outcome not in PASSED or ours.get(test) in PASSED:
            continue
        if test in accepted:
            accepted_diffs[test] = (outcome, ours.get(test, "missing"), accepted[test])
        elif test not in ours:
            missing.append(test)
        else:
            regressions[test] = (outcome, ours[test])
    fixed = sorted(t for t, o in ours.items() if o in PASSED and stock.get(t, "") not in PASSED)
    not_passing = {t: o for t, o in sorted(stock.items()) if o not in PASSED and o != "skipped"}
    return Comparison(regressions, missing, fixed, not_passing, accepted_diffs)
