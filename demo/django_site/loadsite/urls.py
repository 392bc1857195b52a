from __future__ import annotations

from django.urls import path

from loadsite import views

urlpatterns = [
    path("item/<int:pk>", views.item),
    path("slow/<int:pk>", views.slow),
    path("pool-stats", views.pool_stats),
]
