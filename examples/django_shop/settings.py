"""Settings of the example shop: Django's admin and the relay's app, one SQLite database.

The relay's outbox lives in the shop's own database (the usual case: the admin reads it there):
``SHOP_DATABASE`` names the file and ``RELAY_DATABASE_URL`` the same one, for the web process
and the workers alike (``manage.py check`` warns when they differ). The keys, Redis and the
rest come from ``RELAY_*`` variables too.
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE = Path(os.environ.get("SHOP_DATABASE", Path(__file__).with_name("shop.sqlite3")))

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "only-for-the-example")
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_shop.urls"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "relay.contrib.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE}}

# Over RELAY_* variables, for the web processes (workers read only the variables).
RELAY = {
    "DATABASE_ALIAS": "default",  # the DATABASES entry holding the outbox, for the admin
    "ENQUEUE_TIMEOUT": 0.1,
}
