"""The option tables in README.md and docs/django.md are the option table's own words.

Each option is declared once (the engine's table in ``lido_core::config``, Pool's hooks in
``django_lido.options``, the Django layer's in ``backends/pool_options.py``); a default, a
bound or a sentence changed there fails here until the docs say the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from django_lido.backends.pool_options import DJANGO_OPTIONS
from django_lido.options import DEFAULTS, HOOKS, OPTIONS, Option, PoolOptions

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| option | default | allowed | meaning |"


def _default(o: Option) -> str:
    if o.kind == "hook":
        return str(o.default)
    v = o.default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"`{v!r}`" if isinstance(v, str) else f"`{v}`"


def rows(options: Iterable[Option]) -> list[str]:
    return [f"| `{o.name}` | {_default(o)} | {o.allowed} | {o.doc} |" for o in options]


def table_in(path: Path) -> list[str]:
    """The rows of the option table (the one under HEADER) in a markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert HEADER in lines, f"{path.name} has no option table headed {HEADER!r}"
    start = lines.index(HEADER) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize(
    ("doc", "options"),
    [
        ("README.md", [*OPTIONS.values(), *HOOKS.values()]),
        ("docs/django.md", [*OPTIONS.values(), *DJANGO_OPTIONS.values()]),
    ],
)
def test_docs_tables_match_the_option_table(doc: str, options: list[Option]) -> None:
    expected = rows(options)
    found = table_in(ROOT / doc)
    assert found == expected, f"{doc}: the option table should read\n" + "\n".join(
        [HEADER, "| --- | --- | --- | --- |", *expected]
    )


def test_the_table_reaches_python_whole() -> None:
    """Every option of the engine's table, with a default PoolOptions() agrees with."""
    assert list(OPTIONS) == [
        "min_size",
        "max_size",
        "timeout",
        "max_waiting",
        "max_lifetime",
        "lifetime_jitter",
        "max_idle",
        "max_uses",
        "check_after_idle",
        "turn_length",
        "probe",
        "leak_threshold",
        "stack_depth",
        "idle_in_transaction_threshold",
        "idle_in_transaction_timeout",
        "query_stats",
        "query_stats_max_shapes",
    ]
    assert PoolOptions().as_dict() == DEFAULTS
    for o in OPTIONS.values():
        assert o.doc and o.allowed and o.kind in {"count", "seconds", "fraction", "flag"}


def test_a_changed_default_shows_in_the_rendered_row() -> None:
    """The comparison can fail: a row rendered from a different default or sentence differs."""
    o = OPTIONS["max_size"]
    changed = Option(o.name, o.kind, o.default + 1, o.allowed, o.doc)
    assert rows([changed]) != rows([o])
    reworded = Option(o.name, o.kind, o.default, o.allowed, o.doc + ".")
    assert rows([reworded]) != rows([o])
