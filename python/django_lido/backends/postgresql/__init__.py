"""``ENGINE: "django_lido.backends.postgresql"``: Django's PostgreSQL backend on the pool."""
