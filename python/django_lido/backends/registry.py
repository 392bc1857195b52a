"""The process's pools for Django, keyed by what the connections are opened with.

Two ``DATABASES`` aliases with the same connection parameters and pool options share one
pool; an alias whose settings change (a test database's NAME, an ``assume_role``) gets
another. Pools are found by database so that every pooled connection to a database can be
closed before it is dropped or used as a template.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from django_lido.pool import Pool


@dataclass(frozen=True)
class Target:
    """The server and database a pool's connections are open to."""

    vendor: str
    host: str
    port: str
    database: str


_lock = threading.Lock()
_pools: dict[Hashable, tuple[Target, Pool]] = {}


def get_or_create(key: Hashable, target: Target, create: Callable[[], Pool]) -> Pool:
    """The open pool for ``key``, created with ``create()`` by the first thread to ask; a
    closed one (``Pool.close()`` called directly) is replaced, under the lock, so that two
    threads never replace it twice."""
    entry = _pools.get(key)
    if entry is not None and not entry[1].closed:
        return entry[1]
    with _lock:
        entry = _pools.get(key)
        if entry is None or entry[1].closed:
            entry = (target, create())
            _pools[key] = entry
    return entry[1]


def close(key: Hashable) -> bool:
    """Closes and forgets the pool for ``key``; False if there was none."""
    with _lock:
        entry = _pools.pop(key, None)
    if entry is None:
        return False
    entry[1].close()
    return True


def close_for_database(vendor: str, database: str, host: str | None = None) -> int:
    """Closes and forgets every pool with connections to ``database`` (on ``host``, or on any
    host). Idle connections close now, those in use when they are returned. Returns how
    many pools were closed."""
    with _lock:
        keys = [
            key
            for key, (t, _) in _pools.items()
            if t.vendor == vendor and t.database == database and (host is None or t.host == host)
        ]
        closing = [_pools.pop(key)[1] for key in keys]
    for pool in closing:
        pool.close()
    return len(closing)
