"""``/item/<id>``: two queries; ``/slow/<id>``: the same inside a transaction held ~5 ms;
``/pool-stats``: this worker process's pool statistics (takes no connection)."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse

from loadsite.models import Item

HIST_KEYS = ("p50_ms", "p99_ms", "max_ms")
STATS_KEYS = (
    "pool_size",
    "pool_max",
    "in_use",
    "requests_num",
    "requests_queued",
    "requests_timeouts",
    "connections_num",
    "connections_lost",
)


def _item(pk: int) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    row: dict[str, Any] = Item.objects.values("id", "name", "value").get(pk=pk)
    return row


def item(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(_item(pk))


def slow(request: HttpRequest, pk: int) -> JsonResponse:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.005)")
        return JsonResponse(_item(pk))


def pool_stats(request: HttpRequest) -> JsonResponse:
    pool = connection.pool
    if pool is None:
        return JsonResponse({"pid": os.getpid(), "pool": None})
    stats = pool.stats()
    out: dict[str, Any] = {"pid": os.getpid(), **{k: stats[k] for k in STATS_KEYS}}
    for hist in ("acquire_wait", "usage"):
        out[hist] = {k: stats[hist][k] for k in HIST_KEYS}
    return JsonResponse(out)
