"""PostGIS on the pool: Django's PostGIS backend with the PostgreSQL pooling mixed in."""

from __future__ import annotations

from django.contrib.gis.db.backends.postgis import base as stock

from django_lido.backends.postgresql.base import PostgresPoolMixin
from django_lido.backends.postgresql.creation import DatabaseCreation


class DatabaseWrapper(PostgresPoolMixin, stock.DatabaseWrapper):
    creation_class = DatabaseCreation
