"""Settings of the demo site run by ``demo/django_load.py``: the database comes from
``LIDO_DEMO_DB_*`` environment variables, on django-lido's PostgreSQL backend."""

from __future__ import annotations

import os

SECRET_KEY = "django-lido-demo-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "loadsite.urls"
WSGI_APPLICATION = "loadsite.wsgi.application"
INSTALLED_APPS = ["django_lido", "loadsite"]
MIDDLEWARE: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django_lido.backends.postgresql",
        "NAME": os.environ["LIDO_DEMO_DB_NAME"],
        "HOST": os.environ.get("LIDO_DEMO_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("LIDO_DEMO_DB_PORT", "5432"),
        "USER": os.environ.get("LIDO_DEMO_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("LIDO_DEMO_DB_PASSWORD", ""),
        # The pool's intended mode: Django hands the connection back at the end of each
        # request, and the next request of any thread of this process takes one from the pool.
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"pool": {"max_size": int(os.environ.get("LIDO_DEMO_POOL_MAX_SIZE", "4"))}},
    }
}

# With DEBUG off, Django would mail a 500's traceback to ADMINS; print it instead.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
