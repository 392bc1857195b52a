"""Django's postgresql test-database creation with every pooled connection closed first (see
``django_lido.backends.creation``)."""

from __future__ import annotations

from django.db.backends.postgresql import creation as stock

from django_lido.backends.creation import PooledCreationMixin


class DatabaseCreation(PooledCreationMixin, stock.DatabaseCreation):
    pass
