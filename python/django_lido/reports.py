"""A pool's reports: long holds, leaks and idle transactions, logged (logger
``django_lido.pool``) with the stacks that took the connection and began the transaction,
and kept, the last ``KEPT`` of them, for ``Pool.reports()``.

The engine makes each report as a dict (crates/lido-python/src/reports.rs) with the keys
``kind``, ``at`` (``time.time()``), ``connection_id``, ``seconds``, ``holder`` (``thread``,
``thread_id``, ``greenlet``, ``task``, ``label``), ``stack`` and ``transaction_stack`` (lists of
"file:line in function", innermost last, or None with ``stack_depth=0``) and
``last_statement`` (its shape: never a parameter value).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from django_lido.options import PoolOptions

logger = logging.getLogger("django_lido.pool")

KEPT = 100


def _who(holder: dict[str, Any]) -> str:
    thread, greenlet, label = holder["thread"], holder.get("greenlet"), holder.get("label")
    who = (
        f"thread {thread!r}"
        if thread is not None
        else f"a thread that has ended (id {holder['thread_id']})"
    )
    if greenlet is not None:
        who = f"greenlet {greenlet!r} in {who}"
    if holder.get("task") is not None:
        who = f"task {holder['task']!r} in {who}"
    if label is not None:
        who += f", now in {label}"
    return who


def _stack(title: str, stack: list[str] | None) -> str:
    if not stack:
        return ""
    return f"\n  {title}:\n" + "\n".join(f"    {line}" for line in stack)


class Ring:
    """The ``on_report`` hook of one pool: logs each report and keeps the last ones."""

    def __init__(self, name: str, options: PoolOptions) -> None:
        self.name = name
        self.leak_threshold = options["leak_threshold"]
        self.idle_threshold = options["idle_in_transaction_threshold"]
        self.idle_timeout = options["idle_in_transaction_timeout"]
        self.kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEPT)

    def list(self) -> list[dict[str, Any]]:
        return list(self.kept)

    def report(self, r: dict[str, Any]) -> None:
        self.kept.append(r)
        kind, conn_id, seconds, who = r["kind"], r["connection_id"], r["seconds"], _who(r["holder"])
        taken = _stack("taken at", r["stack"])
        begun = _stack("transaction begun at", r["transaction_stack"])
        if kind == "long_hold":
            logger.warning(
                "pool %r: connection #%d has been held for %.1f s by %s and is not returned "
                "yet (leak_threshold=%s s); a connection kept for good is a leak%s",
                self.name, conn_id, seconds, who, self.leak_threshold, taken,
            )  # fmt: skip
        elif kind == "long_hold_returned":
            logger.warning(
                "pool %r: connection #%d, reported as held past leak_threshold, came back "
                "after %.1f s (taken by %s)",
                self.name, conn_id, seconds, who,
            )  # fmt: skip
        elif kind == "leak":
            logger.warning(
                "pool %r: connection #%d was dropped by its holder after %.3f s without being "
                "returned; its slot is free again (return connections with putconn() or use "
                "pool.connection()); held by %s%s",
                self.name, conn_id, seconds, who, taken,
            )  # fmt: skip
        elif kind == "idle_in_transaction":
            logger.warning(
                "pool %r: connection #%d has been idle in a transaction for %.1f s "
                "(idle_in_transaction_threshold=%s s), held by %s; last statement: %s%s%s",
                self.name, conn_id, seconds, self.idle_threshold, who,
                r["last_statement"], begun, taken,
            )  # fmt: skip
        else:
            logger.warning(
                "pool %r: connection #%d was idle in a transaction for %.1f s "
                "(idle_in_transaction_timeout=%s s): the pool ended it (the server rolls it "
                "back; the connection is discarded when it comes back), held by %s; last "
                "statement: %s%s",
                self.name, conn_id, seconds, self.idle_timeout, who, r["last_statement"],
                begun,
            )  # fmt: skip
