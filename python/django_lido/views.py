"""The staff-only dashboard: a page, the JSON it polls, and its few actions.

Mount with ``path("lido/", include("django_lido.urls"))``. The page polls ``snapshot``
about once a second; that view returns ``django_lido.observe.host.host_snapshot()`` (every
live process of this host) cut down to the keys the page shows, so that a key added
upstream with raw SQL in it cannot reach a browser unnoticed. Anonymous users are sent to
``settings.LOGIN_URL``; signed-in users who are not active staff get 403. Actions are POSTs
with a CSRF token; each reaches the processes of the host through their publishers (a
resize, the process named or all). The
``metrics`` route of ``django_lido.urls`` is ``django_lido.observe.metrics.metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

View = Callable[..., HttpResponse]

# What the page may see of each kind of row. Statements appear only as shapes (Seam A:
# literals and parameter values replaced), and only under these keys.
HOLDER_KEYS = ("thread", "thread_id", "greenlet", "task", "label")
CONNECTION_KEYS = (
    "pid", "pool", "id", "held_for", "taken_at", "in_transaction", "transaction_for",
    "last_statement", "last_statement_seconds", "statement_running", "stack",
    "transaction_stack",
)  # fmt: skip
QUERY_KEYS = (
    "pool", "shape", "count", "errors", "total_s", "mean_s", "p50_s", "p99_s", "max_s", "rows",
    "processes",
)  # fmt: skip
REPORT_KEYS = (
    "pid", "pool", "kind", "at", "connection_id", "seconds", "stack", "transaction_stack",
    "last_statement",
)  # fmt: skip
PROCESS_KEYS = ("pid", "title", "argv0", "host", "started_at", "written_at")
POOL_KEYS = ("name", "alias", "vendor", "database")


def staff_only(*, page: bool) -> Callable[[View], View]:
    """Active staff pass. Otherwise a page redirects anonymous users to the login page;
    everything else answers 403 (a JSON poll has nobody to redirect)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if user.is_active and getattr(user, "is_staff", False):
                return view(request, *args, **kwargs)
            if page and not user.is_authenticated:
                # Imported here: django.contrib.auth.views loads auth's models, and
                # django_lido.urls (the metrics route) must import without the auth app.
                from django.contrib.auth.views import redirect_to_login

                return redirect_to_login(request.get_full_path())
            raise PermissionDenied("django-lido's dashboard is for staff only")

        return wrapper

    return decorate


@require_GET
@never_cache
@ensure_csrf_cookie
@staff_only(page=True)
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "django_lido/dashboard.html", {"pid": os.getpid()})


@require_GET
@never_cache
@staff_only(page=False)
def snapshot(request: HttpRequest) -> JsonResponse:
    from django_lido.observe import host_snapshot

    return JsonResponse(public_snapshot(host_snapshot()))


def public_snapshot(snap: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a host snapshot the page shows, and nothing else."""
    processes = []
    for record in snap.get("processes") or ():
        proc = _pick(record, PROCESS_KEYS)
        proc["pools"] = [
            {**_pick(p, POOL_KEYS), "stats": _numbers(p.get("stats") or {})}
            for p in record.get("pools") or ()
        ]
        processes.append(proc)
    return {
        "host": snap.get("host"),
        "taken_at": snap.get("taken_at"),
        "served_by": os.getpid(),
        "processes": processes,
        "pools": [_numbers(p) for p in snap.get("pools") or ()],
        "connections": _rows(snap.get("connections"), CONNECTION_KEYS, holder=True),
        "queries": _rows(snap.get("queries"), QUERY_KEYS),
        "leaks": _rows(snap.get("leaks"), REPORT_KEYS, holder=True),
    }


def _pick(row: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: row[k] for k in keys if k in row}


def _rows(rows: Any, keys: tuple[str, ...], *, holder: bool = False) -> list[dict[str, Any]]:
    out = []
    for row in rows or ():
        picked = _pick(row, keys)
        if holder and isinstance(row.get("holder"), Mapping):
            picked["holder"] = _pick(row["holder"], HOLDER_KEYS)
        out.append(picked)
    return out


def _numbers(d: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers, names and nested summaries (the stats dict's histograms), recursively."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bool | int | float) or v is None or k in POOL_KEYS:
            out[k] = v
        elif isinstance(v, Mapping):
            out[k] = _numbers(v)
    return out


@require_POST
@csrf_protect
@staff_only(page=False)
def action(request: HttpRequest, name: str) -> JsonResponse:
    """Asks the processes of the host to act on their pools named ``pool`` (all pools when
    none is named), each at its next publishing tick: ``reset_queries`` (their statement
    statistics), ``drain`` (every connection replaced), ``resize`` (``min_size``,
    ``max_size``, of the pool named; of process ``pid`` only when given)."""
    from django_lido.observe.publish import ACTIONS, request_action, request_resize

    pool = request.POST.get("pool") or None
    if name not in ACTIONS:
        return JsonResponse({"error": f"unknown action {name!r}"}, status=404)
    if name != "resize":
        request_action(name, pool=pool)
        return JsonResponse({"ok": True})
    try:
        if pool is None:
            raise ValueError("the pool to resize must be named")
        pid = int(request.POST["pid"]) if request.POST.get("pid") else None
        sizes = int(request.POST["min_size"]), int(request.POST["max_size"])
        request_resize(pool, *sizes, pid=pid)
    except (KeyError, ValueError) as exc:
        return JsonResponse({"error": f"resize: {exc}"}, status=400)
    return JsonResponse({"ok": True})
