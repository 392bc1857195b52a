"""Django database backends on the pool: ``django_lido.backends.postgresql``,
``django_lido.backends.postgis``.

Each backend subclasses Django's stock backend and overrides the few hook points where a
connection is opened and closed (see ``pooled.PooledDatabaseMixin``); everything else is
Django's own code.
"""
