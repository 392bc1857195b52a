"""django-lido: a database connection pool with its engine in Rust.

``Pool`` works with any DB-API driver on its own; the Django database backends build on it.
``AsyncPool`` is its asyncio counterpart for async drivers (psycopg's ``AsyncConnection``).
"""

from django_lido._green import BlockingDriverWarning
from django_lido._lido import __version__
from django_lido.aio import AsyncPool
from django_lido.drivers import Driver
from django_lido.errors import (
    PoolClosed,
    PoolError,
    PoolInternalError,
    PoolTimeout,
    TooManyWaiters,
)
from django_lido.options import PoolOptions
from django_lido.pool import Pool
from django_lido.threads import close_connection

__all__ = [
    "AsyncPool",
    "BlockingDriverWarning",
    "Driver",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolInternalError",
    "PoolOptions",
    "PoolTimeout",
    "TooManyWaiters",
    "__version__",
    "close_connection",
]
