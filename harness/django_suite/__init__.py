"""Django's own test suite as an acceptance test for our database backends.

The suite is taken from the sdist of the *installed* Django (downloaded once into a cache),
run with ``tests/runtests.py`` against a throwaway PostgreSQL or MariaDB (or an existing
server), once with Django's stock ENGINE and once with ours; every test that passes with the
stock backend must pass with ours. Per-test outcomes are parsed from the ``-v 2`` output and
cross-checked against the final ``Ran N tests`` / ``OK`` / ``FAILED`` lines, so a broken parse
cannot pass.

Run ``python -m harness.django_suite --help`` for the command line.
"""

from __future__ import annotations

from harness.django_suite.compare import ACCEPTED_DIFFERENCES, Comparison, compare
from harness.django_suite.parse import parse_output
from harness.django_suite.run import DEFAULT_MODULES, GIS_MODULES, SuiteResult, run_suite
from harness.django_suite.sdist import django_source, ensure_requirements
from harness.django_suite.settings import (
    DRIVER_MODULES,
    DRIVERS,
    MYSQL_DRIVERS,
    VENDORS,
    AnyServer,
    databases_setting,
    gis_prerequisites,
    postgis_available,
    server_vendor,
    suite_server,
)

__all__ = [
    "ACCEPTED_DIFFERENCES",
    "DEFAULT_MODULES",
    "DRIVERS",
    "DRIVER_MODULES",
    "GIS_MODULES",
    "MYSQL_DRIVERS",
    "VENDORS",
    "AnyServer",
    "Comparison",
    "SuiteResult",
    "compare",
    "databases_setting",
    "django_source",
    "ensure_requirements",
    "gis_prerequisites",
    "parse_output",
    "postgis_available",
    "run_suite",
    "server_vendor",
    "suite_server",
]
