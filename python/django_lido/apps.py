"""The optional ``django_lido`` app: add it to INSTALLED_APPS to get the system checks
registered even before any database is used."""

from __future__ import annotations

from django.apps import AppConfig


class DjangoLidoConfig(AppConfig):
    name = "django_lido"
    verbose_name = "django-lido connection pool"

    def ready(self) -> None:
        from django_lido.backends import checks

        checks.register()
