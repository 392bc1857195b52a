"""The dashboard's routes: ``path("lido/", include("django_lido.urls"))``. ``metrics`` is the
Prometheus exposition; the other routes are staff-only (see ``django_lido.views``)."""

from __future__ import annotations

from django.urls import path

from django_lido import views
from django_lido.observe import metrics

app_name = "django_lido"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("snapshot.json", views.snapshot, name="snapshot"),
    path("actions/<slug:name>", views.action, name="action"),
    path("metrics", metrics.metrics, name="metrics"),
]
