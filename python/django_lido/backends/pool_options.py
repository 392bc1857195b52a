"""Reads the pool's settings from a Django ``DATABASES`` entry.

Pooling is on by default: ``OPTIONS["pool"]`` may be a dict of pool options, ``True``
(defaults), or ``False``/``None`` (no pool: Django's own connection handling). The keys of
Django's native pool (psycopg_pool's) are accepted where they mean the same thing here,
and so is the ``MAX_CONNS``/``MIN_CONNS`` spelling of older pooled backends. Every other
OPTIONS key still goes to the driver. Mistakes raise ``ImproperlyConfigured`` naming the
setting, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_lido.options import DEFAULTS, HOOKS, OPTIONS, Option, PoolOptions

# OPTIONS keys this layer consumes; the rest go to the driver.
POOL_KEY = "pool"
LEGACY_KEYS = {"MAX_CONNS": "max_size", "MIN_CONNS": "min_size"}
CONSUMED_KEYS = frozenset({POOL_KEY, *LEGACY_KEYS})

RESET_POLICIES = ("auto", "full", "rollback")

# The options of this layer; the engine's (OPTIONS) pass through to ``Pool``.
DJANGO_OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        HOOKS["check"],
        Option(
            "reset",
            "policy",
            "auto",
            f"{', '.join(map(repr, RESET_POLICIES))} or a callable taking the connection",
            "what happens to session state on return; see below",
        ),
        Option(
            "transaction_pooler",
            "flag",
            False,
            "True or False",
            "the server sits behind PgBouncer (or similar) in transaction mode",
        ),
        Option(
            "name",
            "hook",
            "alias:dbname",
            "a string",
            "the pool's name in messages, logs and statistics",
        ),
        Option(
            "open",
            "flag",
            False,
            "True or False",
            "open `min_size` connections when the pool is created",
        ),
    )
}

# psycopg_pool options that have no meaning here, with the reason given to the user.
UNSUPPORTED = {
    "num_workers": "connections are opened by the threads that need them, with no workers",
    "reconnect_timeout": "a connect that fails while the server is down or restarting is "
    "retried within each checkout's timeout (one connect at a time for the pool, with "
    "back-off); other connect errors are raised at once",
    "reconnect_failed": "a checkout that cannot connect within its timeout raises PoolTimeout, "
    "with the last connect error as its cause",
    "kwargs": "connection arguments come from NAME, USER, HOST, PORT and OPTIONS",
    "connection_class": "the connection class is the driver's, as Django chooses it",
    "configure": "per-connection set-up is the backend's (time zone, role, isolation level)",
    "close_returns": "Django returns connections when it closes them",
}


# Set once this process makes or uses a test database (``backends/creation.py``): a test run
# holds its connections from start to end (Django's TestCase), which is no leak.
test_run = False


@dataclass(frozen=True)
class PoolSettings:
    """What a DATABASES entry asks of the pool."""

    options: PoolOptions
    name: str | None = None
    check: Callable[[Any], object] | None = None
    reset: str | Callable[[Any], object] = "auto"
    transaction_pooler: bool = False
    open: bool = False

    def pool_key(self) -> tuple[Any, ...]:
        """What distinguishes two pools' behaviour (hooks by identity)."""
        return (
            self.options,
            self.name,
            id(self.check) if self.check is not None else None,
            self.reset if isinstance(self.reset, str) else id(self.reset),
            self.transaction_pooler,
        )


def _setting(alias: str, key: str) -> str:
    return f"DATABASES[{alias!r}]['OPTIONS'][{key!r}]"


def pool_settings(
    alias: str,
    options: Mapping[str, Any],
    conn_max_age: float | None = 0,
    in_test_run: bool = False,
) -> PoolSettings | None:
    """The pool settings of the ``DATABASES[alias]`` entry whose OPTIONS are ``options``
    and whose ``CONN_MAX_AGE`` is ``conn_max_age``, in a test run or not, or None when
    pooling is switched off."""
    raw = options.get(POOL_KEY, True)
    legacy = {new: options[old] for old, new in LEGACY_KEYS.items() if old in options}
    if raw is None or raw is False:
        if legacy:
            raise ImproperlyConfigured(
                f"{_setting(alias, POOL_KEY)} is {raw!r} (no pool) but "
                f"{', '.join(k for k in LEGACY_KEYS if k in options)} is set: "
                "remove one of them"
            )
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"{_setting(alias, POOL_KEY)} must be a dict of pool options, True or False, "
            f"not {raw!r}"
        )
    where = _setting(alias, POOL_KEY)
    given = dict(raw)
    for key, value in legacy.items():
        if key in given and given[key] != value:
            old = next(k for k, v in LEGACY_KEYS.items() if v == key)
            raise ImproperlyConfigured(
                f"{_setting(alias, old)}={value!r} conflicts with {where}[{key!r}]="
                f"{given[key]!r}: set only one of them"
            )
        given.setdefault(key, value)

    for key in given:
        if not isinstance(key, str):
            raise ImproperlyConfigured(f"{where} has a non-string key {key!r}")
        if key in UNSUPPORTED:
            raise ImproperlyConfigured(
                f"{where}[{key!r}] is not supported by django-lido: {UNSUPPORTED[key]}"
            )
    allowed = (*OPTIONS, *DJANGO_OPTIONS)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown pool option(s) {', '.join(map(repr, unknown))} in {where}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )

    engine_opts = {k: given[k] for k in OPTIONS if k in given}
    # psycopg_pool's max_size=None means "same as min_size"; keep that meaning.
    if "max_size" in engine_opts and engine_opts["max_size"] is None:
        del engine_opts["max_size"]
        if "min_size" in engine_opts:
            engine_opts["max_size"] = engine_opts["min_size"]
    if "min_size" in engine_opts and "max_size" not in engine_opts:
        # Unlike psycopg_pool (max_size defaults to min_size), a larger min_size raises
        # the default max_size with it rather than being an error.
        min_size = engine_opts["min_size"]
        if isinstance(min_size, int) and not isinstance(min_size, bool):
            engine_opts["max_size"] = max(min_size, DEFAULTS["max_size"])
    if "leak_threshold" not in engine_opts and (conn_max_age != 0 or in_test_run):
        # Persistent connections: a thread keeps its connection between requests, up to
        # CONN_MAX_AGE (None: for good) and, idle, until its next request; a test run keeps
        # its connections throughout. Long holds are the point then, not leaks; a threshold
        # given in OPTIONS still applies.
        engine_opts["leak_threshold"] = None
    try:
        checked = PoolOptions(**engine_opts)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None

    def bad(key: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"{where}: invalid pool option {key}={given[key]!r}: {DJANGO_OPTIONS[key].allowed}"
        )

    name = given.get("name")
    if name is not None and not isinstance(name, str):
        raise bad("name")
    check = given.get("check")
    if check is not None and not callable(check):
        raise bad("check")
    reset = given.get("reset", "auto")
    if reset is None:
        reset = "auto"
    if not callable(reset) and reset not in RESET_POLICIES:
        raise bad("reset")
    flags = {}
    for key in ("transaction_pooler", "open"):
        if key in given:
            if not isinstance(given[key], bool):
                raise bad(key)
            flags[key] = given[key]
    return PoolSettings(options=checked, name=name, check=check, reset=reset, **flags)


def driver_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """OPTIONS without the keys this layer consumes."""
    return {k: v for k, v in options.items() if k not in CONSUMED_KEYS}
