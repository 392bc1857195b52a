"""The variant catalog: keys, row labels, DATABASES entries and the constants shared by
parent and children."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

VENDORS = ("postgresql", "mysql")  # Django's vendor names, also the backends' module names
SECTIONS = {"postgresql": "django_cycle", "mysql": "django_cycle_mysql"}
DBNAME = "djbench"
APP_LABEL = "djbench"
ITEMS = 1000
BOOKS = 1000
AUTHORS = 200
PUBLISHERS = 50
STORES = 20
COUNTRIES = ("AR", "BR", "CA", "DE", "ES", "FR", "IT", "JP", "NL", "US")


# --- variants ----------------------------------------------------------------------------------
#
# A variant key is "kind" or "kind-N" (N: pool size). The child builds its DATABASES entry
# from the key; the parent only passes keys around.

KINDS: dict[str, str] = {  # kind -> row label
    "nopool": "no pool",
    "persistent": "persistent",
    "native": "native pool",
    "native_ssbp": "native pool + server_side_binding + prepare_threshold 5 (info)",
    "dbcp": "django-db-connection-pool",
    "lido": "lido",
    "lido_ssb": "lido + server_side_binding",
    "noop": "stock backend + a no-op pool (info)",
    "lido_noop": "lido backend + a no-op engine (info)",
}
MYSQL_DRIVERS = {"mysqlclient": "MySQLdb", "pymysql": "pymysql"}  # --driver -> module
# Django's MySQL backend has no pool, and MySQLdb/PyMySQL bind on the client only.
POSTGRESQL_ONLY = frozenset({"native", "native_ssbp", "lido_ssb"})


def split_key(key: str) -> tuple[str, int | None]:
    kind, _, size = key.partition("-")
    if kind not in KINDS:
        raise ValueError(f"unknown variant kind {kind!r} in {key!r}")
    return kind, int(size) if size else None


def label(key: str, threads: int) -> str:
    kind, n = split_key(key)
    if n is None or kind == "nopool":
        return KINDS[kind]
    if kind == "persistent":
        # Persistent with fewer threads than the others: 4 threads with a connection
        # each, no pool, is what any pool of 4 shared by more threads can at best reach
        # in (b), where a thread does nothing but database work.
        return f"persistent, {n} threads" + (" (info)" if n < threads else "")
    if kind == "dbcp":
        return f"{KINDS[kind]} size {n}, no overflow"
    return f"{KINDS[kind]}, max {n}"


def database_settings(key: str, db: dict[str, str], vendor: str) -> dict[str, Any]:
    """The DATABASES entry of a variant; `db` has host (a Unix socket: a directory for
    PostgreSQL, the socket file for MySQL), port, user and maybe password."""
    kind, n = split_key(key)
    if kind in POSTGRESQL_ONLY and vendor != "postgresql":
        raise ValueError(f"variant {key!r} is PostgreSQL-only")
    entry: dict[str, Any] = {
        "ENGINE": f"django.db.backends.{vendor}",
        "NAME": DBNAME,
        "USER": db["user"],
        "HOST": db["host"],
        "PORT": db["port"],
        "CONN_MAX_AGE": 0,
        "OPTIONS": {},
    }
    if db.get("password"):
        entry["PASSWORD"] = db["password"]
    if kind == "persistent":
        entry["CONN_MAX_AGE"] = 600
    elif kind == "native":
        entry["OPTIONS"] = {"pool": {"min_size": n, "max_size": n}}
    elif kind == "native_ssbp":
        entry["OPTIONS"] = {
            "server_side_binding": True,
            "prepare_threshold": 5,
            "pool": {"min_size": n, "max_size": n},
        }
    elif kind == "dbcp":
        entry["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
        entry["POOL_OPTIONS"] = {"POOL_SIZE": n, "MAX_OVERFLOW": 0}
    elif kind == "lido":
        # Sized like the native pool above: opened ahead, min_size = max_size.
        entry["ENGINE"] = f"django_lido.backends.{vendor}"
        entry["OPTIONS"] = {"pool": {"min_size": n, "max_size": n, **extra_pool_options()}}
    elif kind == "lido_noop":
        # One connection, which install_noop_engine() takes from the pool for good.
        entry["ENGINE"] = f"django_lido.backends.{vendor}"
        entry["OPTIONS"] = {"pool": {"max_size": 1}}
    elif kind == "lido_ssb":
        entry["ENGINE"] = "django_lido.backends.postgresql"
        entry["OPTIONS"] = {
            "server_side_binding": True,
            "pool": {"min_size": n, "max_size": n},
        }
    return entry


def extra_pool_options() -> dict[str, Any]:
    """More pool options for the "lido" variants, as JSON in LIDO_BENCH_POOL_OPTIONS
    (bench/observe_cost.py runs them with its observability off this way)."""
    raw = os.environ.get("LIDO_BENCH_POOL_OPTIONS")
    return json.loads(raw) if raw else {}


def scenario_variants(scenario: str, args: argparse.Namespace) -> list[str]:
    keys = postgresql_variants(scenario, args)
    if args.vendor == "postgresql":
        return keys
    return [k for k in keys if split_key(k)[0] not in POSTGRESQL_ONLY]


def postgresql_variants(scenario: str, args: argparse.Namespace) -> list[str]:
    n, t = args.size, args.threads
    if scenario == "a":
        return [
            "nopool",
            "persistent",
            "noop",
            "lido_noop",
            f"native-{n}",
            f"dbcp-{n}",
            f"lido-{n}",
        ]
    if scenario == "b":
        return [
            "nopool",
            f"persistent-{t}",
            f"persistent-{n}",
            f"native-{n}",
            f"native-{t}",
            f"dbcp-{n}",
            f"lido-{n}",
            f"lido-{t}",
        ]
    if scenario == "c":
        return [f"native-{n}", f"lido-{n}", f"lido_ssb-{n}", f"native_ssbp-{n}"]
    raise ValueError(scenario)
