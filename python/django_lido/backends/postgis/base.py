"""PostGIS on the pool: Django's PostGIS backend with the PostgreSQL pooling mixed in.

Django's PostGIS backend registers its geometry adapters at every connect, which with a pool
means at every checkout, and builds new dumper classes each time. The adapters live on the
physical connection, so here they are registered once per connection, and again only when
the type information Django holds for the alias changes (``clear_caches``, as after
``CREATE EXTENSION postgis`` in a new test database).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from django.contrib.gis.db.backends.postgis import base as stock
from django.contrib.gis.db.backends.postgis import features as stock_features
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from django_lido.backends.postgresql.base import PostgresPoolMixin
from django_lido.backends.postgresql.creation import DatabaseCreation
from django_lido.backends.postgresql.features import PooledFeaturesMixin

# Connection -> the type information its adapters were registered from.
_registered: weakref.WeakKeyDictionary[Any, tuple[object, ...]] = weakref.WeakKeyDictionary()
_UNFETCHED = object()


class DatabaseFeatures(PooledFeaturesMixin, stock_features.DatabaseFeatures):
    pass


if TYPE_CHECKING:

    class _Stock(stock.DatabaseWrapper):
        """Django's PostGIS wrapper with what django-stubs leaves out."""

        _type_infos: dict[str, dict[str, Any]]

        def register_geometry_adapters(
            self, pg_connection: Any, clear_caches: bool = False
        ) -> None: ...

else:
    _Stock = stock.DatabaseWrapper


class DatabaseWrapper(PostgresPoolMixin, _Stock):
    # (Django's PostGIS wrapper swaps in plain PostgreSQL features for its no-database
    # connection by an instance attribute, which still wins over this class attribute.)
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures

    if is_psycopg3:

        def _lido_type_infos(self) -> tuple[object, ...]:
            # Django's per-alias cache; the TypeInfo objects are replaced when it refetches.
            return tuple(
                by_alias.get(self.alias, _UNFETCHED) for by_alias in self._type_infos.values()
            )

        def _lido_after_checkout(self, conn: Any) -> None:
            # The stock PostGIS get_new_connection's step (cheap when already done).
            super()._lido_after_checkout(conn)
            self.register_geometry_adapters(conn)

        def register_geometry_adapters(
            self, pg_connection: Any, clear_caches: bool = False
        ) -> None:
            if not clear_caches:
                done = _registered.get(pg_connection)
                if done is not None and done == self._lido_type_infos():
                    return
            super().register_geometry_adapters(pg_connection, clear_caches)
            infos = self._lido_type_infos()
            if _UNFETCHED not in infos:
                _registered[pg_connection] = infos
