"""What each thread (or greenlet) is doing, for the ``holder`` of ``Pool.connections()`` and
of reports: the request ("GET /path") or Celery task it runs, set when it starts and
removed when it ends. The Django backends set them (``backends/holders.py``); other code
may call ``set_label``/``clear_label`` itself.

Keyed by ``threading.get_ident()`` (under gevent's patching, the greenlet's id), which is
what the engine records at checkout; only read when a report or ``connections()`` is made.
"""

from __future__ import annotations

import threading

labels: dict[int, str] = {}

_ident = threading.get_ident


def set_label(label: str) -> None:
    """Labels the calling thread (or greenlet) until ``clear_label``."""
    labels[_ident()] = label


def clear_label() -> None:
    labels.pop(_ident(), None)
