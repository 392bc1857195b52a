"""``close_connection``: give back the connections that code outside a request took.

Django gives a thread's connections back at the end of each request
(``close_old_connections``). Code that runs elsewhere (a ``ThreadPoolExecutor`` worker, a
thread or greenlet of your own, a management command's loop, a Celery task) keeps what it
took until the thread ends, and with a pool of ``max_size`` connections, ``max_size`` such
threads starve all the others.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast, overload

F = TypeVar("F", bound=Callable[..., Any])


class _GiveBack:
    """At exit, closes every connection of this thread (or greenlet) on every alias, which
    gives pooled ones back to their pool; also when the body raises."""

    def __enter__(self) -> _GiveBack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from django.db import connections

        failed: BaseException | None = None
        for conn in connections.all(initialized_only=True):
            try:
                conn.close()
            except Exception as e:  # close the others first
                failed = failed or e
        if failed is not None:
            if exc is None:
                raise failed
            exc.add_note(f"closing a database connection afterwards also failed: {failed!r}")


@overload
def close_connection(func: F) -> F: ...
@overload
def close_connection(func: None = None) -> _GiveBack: ...
def close_connection(func: F | None = None) -> F | _GiveBack:
    """Gives back, when the block or function ends, every connection the current thread or
    greenlet took through Django, on every alias:

        @close_connection
        def work(item): ...

        with close_connection():
            ...
    """
    if func is None:
        return _GiveBack()
    if inspect.iscoroutinefunction(func):
        # Async code's connections belong to the thread that runs its sync parts.
        raise TypeError(
            f"close_connection wraps synchronous functions, not coroutine function {func!r}; "
            "use it inside the function that sync_to_async runs"
        )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _GiveBack():
            return func(*args, **kwargs)

    return cast(F, wrapper)
