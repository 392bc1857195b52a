"""``ENGINE: "django_lido.backends.mysql"``: Django's MySQL/MariaDB backend on the pool."""
