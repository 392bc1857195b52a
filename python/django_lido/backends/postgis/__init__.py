"""``ENGINE: "django_lido.backends.postgis"``: Django's PostGIS backend on the pool."""
