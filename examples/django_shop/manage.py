#!/usr/bin/env python
"""The example shop's manage.py, run from a checkout of the relay:

export RELAY_SERVOKI_API_KEY=... RELAY_SERVOKI_SITE=shop.example
export SHOP_DATABASE=$PWD/shop.sqlite3 RELAY_DATABASE_URL=sqlite:///$PWD/shop.sqlite3
.venv/bin/python examples/django_shop/manage.py migrate          # Django's tables
.venv/bin/relay db upgrade                                       # the outbox, same file
.venv/bin/python examples/django_shop/manage.py createsuperuser
.venv/bin/python examples/django_shop/manage.py runserver        # /pay, /admin/
.venv/bin/celery -A tasks worker -B                              # delivers the events
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # So that examples.django_shop imports from the checkout, wherever this is run from.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
