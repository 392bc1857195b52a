"""PostGIS on the pool: Django's PostGIS backend with the PostgreSQL pooling mixed in."""

from __future__ import annotations

from django.contrib.gis.db.backends.postgis import base as stock
from django.contrib.gis.db.backends.postgis import features as stock_features

from django_lido.backends.postgresql.base import PostgresPoolMixin
from django_lido.backends.postgresql.creation import DatabaseCreation
from django_lido.backends.postgresql.features import PooledFeaturesMixin


class DatabaseFeatures(PooledFeaturesMixin, stock_features.DatabaseFeatures):
    pass


class DatabaseWrapper(PostgresPoolMixin, stock.DatabaseWrapper):
    # (Django's PostGIS wrapper swaps in plain PostgreSQL features for its no-database
    # connection by an instance attribute, which still wins over this class attribute.)
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures
