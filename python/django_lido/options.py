"""The pool options, declared once.

The engine's options (sizes, times, ``probe``) come from its table in Rust
(``lido_core::config``): name, kind, default, what is allowed and the sentence that explains
each. ``PoolOptions`` checks values against it once, with one wording per rule. The hooks
below are the options of ``Pool`` that the engine never sees. The README's table and
``docs/django.md`` are checked against both by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django_lido._lido import OPTIONS as _TABLE
from django_lido._lido import PoolOptions

__all__ = ["DEFAULTS", "HOOKS", "OPTIONS", "Option", "PoolOptions"]


@dataclass(frozen=True)
class Option:
    """One option: ``kind`` is count, seconds, fraction, flag, or hook (a Python value the
    engine never sees, whose ``default`` is a description)."""

    name: str
    kind: str
    default: Any
    allowed: str
    doc: str


OPTIONS: dict[str, Option] = {row["name"]: Option(**row) for row in _TABLE}
DEFAULTS: dict[str, Any] = {name: o.default for name, o in OPTIONS.items()}

HOOKS: dict[str, Option] = {
    o.name: o
    for o in (
        Option(
            "check",
            "hook",
            "driver's",
            "a callable or None",
            "`callable(conn)` for the round-trip check; raises if the connection is bad "
            "(default: the driver's cheapest query)",
        ),
        Option(
            "configure",
            "hook",
            "None",
            "a callable or None",
            "`callable(conn)`, run once on each new connection",
        ),
        Option(
            "reset",
            "hook",
            "None",
            "a callable or None",
            "`callable(conn)`, run on each return after any rollback; if it raises, the "
            "connection is closed instead of reused",
        ),
        Option(
            "name",
            "hook",
            "pool-N",
            "a string",
            "used in messages, logs, statistics and the maintenance thread's name",
        ),
    )
}
