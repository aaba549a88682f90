"""The relay as a Django app: ``INSTALLED_APPS = [..., "relay.contrib.django"]``.

    apps.py      RelayConfig: reads ``settings.RELAY`` at start, builds the process's enqueuer
    conf.py      how ``settings.RELAY`` is read over ``RELAY_*`` variables
    checks.py    the ``relay.E001``… system checks (``manage.py check``)
    enqueue.py   ``enqueue_on_commit``: validated now, queued once the transaction commits
    transactional.py  ``enqueue_in_transaction``: the outbox row inside the ``atomic()`` block
                 (the project's database is the relay's outbox; loads SQLAlchemy when used)
    models.py    the outbox and attempts tables, unmanaged (the relay's migrations own them)
    admin.py     the outbox in the Django admin: filters, payload, attempts, retry / discard

The web side (``enqueue_on_commit``) loads what ``relay.enqueue`` loads; the admin reads rows
through Django and changes them through :class:`relay.ops.Admin`, the CLI's code.
"""

from typing import TYPE_CHECKING, Any

from relay.contrib.django.enqueue import enqueue_on_commit

if TYPE_CHECKING:
    from relay.contrib.django.transactional import enqueue_in_transaction


def __getattr__(name: str) -> Any:
    if name == "enqueue_in_transaction":
        # SQLAlchemy (which compiles the row's statement) loads with its first use.
        from relay.contrib.django.transactional import enqueue_in_transaction

        return enqueue_in_transaction
    raise AttributeError(f"module 'relay.contrib.django' has no attribute {name!r}")


__all__ = ["enqueue_in_transaction", "enqueue_on_commit"]
