"""Validation of pool options into the plain values the engine takes.

Types are checked here and values in the engine, so that every wrong option is reported
by name with what is allowed, whichever layer catches it.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULTS: dict[str, Any] = {
    "min_size": 0,
    "max_size": 10,
    "timeout": 30.0,
    "max_waiting": 0,
    "max_lifetime": 3600.0,
    "lifetime_jitter": 0.1,
    "max_idle": 600.0,
    "max_uses": 0,
    "check_after_idle": 1.0,
    "turn_length": 0.001,
}

_COUNTS = ("min_size", "max_size", "max_waiting", "max_uses")
_SECONDS = ("timeout", "turn_length")
_OPTIONAL_SECONDS = ("max_lifetime", "max_idle", "check_after_idle")


def _bad(option: str, value: object, allowed: str) -> str:
    return f"invalid pool option {option}={value!r}: {allowed}"


def validate(options: dict[str, Any]) -> dict[str, Any]:
    """Returns the options with defaults filled in, or raises TypeError/ValueError."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown pool option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(DEFAULTS))}"
        )
    out = {**DEFAULTS, **options}
    for name in _COUNTS:
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(_bad(name, v, "an integer"))
        if v < 0:
            raise ValueError(_bad(name, v, "an integer >= 0"))
    for name in (*_SECONDS, *_OPTIONAL_SECONDS, "lifetime_jitter"):
        v = out[name]
        if v is None and name in _OPTIONAL_SECONDS:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            allowed = "a number of seconds" + (", or None" if name in _OPTIONAL_SECONDS else "")
            raise TypeError(_bad(name, v, allowed))
        if not math.isfinite(v) or v < 0:
            raise ValueError(_bad(name, v, "a finite number >= 0"))
        out[name] = float(v)
    if out["timeout"] == 0:
        raise ValueError(_bad("timeout", options.get("timeout"), "a number of seconds > 0"))
    return out
