"""Django database backends on the pool: ``django_lido.backends.postgresql``,
``django_lido.backends.postgis`` and ``django_lido.backends.mysql`` (MySQL and MariaDB).

Each backend subclasses Django's stock backend and overrides the few hook points where a
connection is opened and closed (see ``pooled.PooledDatabaseMixin``); everything else is
Django's own code.
"""
