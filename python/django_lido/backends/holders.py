"""Holder labels from Django and Celery: the request a thread serves ("GET /path", from
``request_started``) or the Celery task it runs ("task app.tasks.name", from
``task_prerun``), shown in ``Pool.connections()`` and in reports (``django_lido.labels``).
Connected once, when the first pooled ``DatabaseWrapper`` is made; Celery's only if Celery
is imported by then (in a worker it is, before Django is set up)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.signals import request_finished, request_started

from django_lido.labels import clear_label, set_label

_installed = False


def _request_started(sender: Any, environ: Any = None, scope: Any = None, **kw: Any) -> None:
    if environ is not None:
        set_label(f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '')}")
    elif scope is not None:
        set_label(f"{scope.get('method', scope.get('type', '?'))} {scope.get('path', '')}")


def _ended(sender: Any = None, **kw: Any) -> None:
    clear_label()


def _task_prerun(sender: Any = None, task: Any = None, **kw: Any) -> None:
    set_label(f"task {getattr(task or sender, 'name', '?')}")


def install() -> None:
    """Connects the signal handlers, once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    request_started.connect(_request_started, dispatch_uid="django_lido.labels")
    request_finished.connect(_ended, dispatch_uid="django_lido.labels")
    if "celery" in sys.modules:
        from celery import signals  # type: ignore[import-untyped]

        signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="django_lido.labels")
        signals.task_postrun.connect(_ended, weak=False, dispatch_uid="django_lido.labels")
