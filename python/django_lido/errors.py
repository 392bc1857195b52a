"""The pool's own exceptions. Errors of the database driver pass through unchanged."""

from django_lido._lido import (
    PoolClosed,
    PoolError,
    PoolInternalError,
    PoolTimeout,
    TooManyWaiters,
)

__all__ = ["PoolClosed", "PoolError", "PoolInternalError", "PoolTimeout", "TooManyWaiters"]
