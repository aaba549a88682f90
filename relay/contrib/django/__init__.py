"""The relay as a Django app: ``INSTALLED_APPS = [..., "relay.contrib.django"]``.

    apps.py      RelayConfig: reads ``settings.RELAY`` at start, builds the process's enqueuer
    conf.py      how ``settings.RELAY`` is read over ``RELAY_*`` variables
    checks.py    the ``relay.E001``… system checks (``manage.py check``)
    enqueue.py   ``enqueue_on_commit``: validated now, queued once the transaction commits
    models.py    the outbox and attempts tables, unmanaged (the relay's migrations own them)
    admin.py     the outbox in the Django admin: filters, payload, attempts, retry / discard

The web side (``enqueue_on_commit``) loads what ``relay.enqueue`` loads; the admin reads rows
through Django and changes them through :class:`relay.ops.Admin`, the CLI's code.
"""

from relay.contrib.django.enqueue import enqueue_on_commit

__all__ = ["enqueue_on_commit"]
