"""The relay's outbox and attempts tables, as Django sees them: unmanaged, read-only.

The relay's own migrations (``relay db upgrade``, or the worker on an embedded outbox) create
and change these tables, so Django never does (``managed = False``, and the app has no
migrations). Rows are read through the database alias ``RELAY["DATABASE_ALIAS"]``; they are
changed only through :class:`relay.ops.Admin` (the admin's retry and discard actions).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import models

from relay.contrib.django.apps import relay_app
from relay.outbox.schema import Status, attempts, outbox


class UTCDateTimeField(models.DateTimeField):  # type: ignore[type-arg]
    """The relay stores naive UTC (:class:`relay.outbox.schema.UTCDateTime`); read it as UTC."""

    def from_db_value(self, value: datetime | None, expression: Any, connection: Any) -> Any:
        if value is not None and value.tzinfo is None and settings.USE_TZ:
            return value.replace(tzinfo=UTC)
        return value


class StoredJSONField(models.JSONField):
    """The relay's ``JSON`` column: text on SQLite, ``json`` (already decoded by psycopg, where
    Django's field expects ``jsonb`` text) on PostgreSQL."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if isinstance(value, str):
            return super().from_db_value(value, expression, connection)
        return value


class RelayManager(models.Manager["Any"]):
    """Reads through the database alias that holds the relay's outbox."""

    def get_queryset(self) -> models.QuerySet[Any]:
        return super().get_queryset().using(relay_app().settings.database_alias)


class OutboxEvent(models.Model):
    """One row of ``relay_outbox``: one event for one destination."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    destination: models.CharField[str, str] = models.CharField(max_length=100)
    event_id: models.CharField[str, str] = models.CharField("event id", max_length=200)
    payload = StoredJSONField()
    status: models.CharField[str, str] = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in Status]
    )
    attempts: models.IntegerField[int, int] = models.IntegerField()
    next_attempt_at = UTCDateTimeField("next attempt at")
    lease_token: models.CharField[str | None, str | None] = models.CharField(
        max_length=36, null=True
    )
    last_status: models.IntegerField[int | None, int | None] = models.IntegerField(
        "last HTTP status", null=True
    )
    last_error: models.TextField[str | None, str | None] = models.TextField("last error", null=True)
    enqueued_at = UTCDateTimeField("enqueued at")
    created_at = UTCDateTimeField("created at")
    updated_at = UTCDateTimeField("changed at")
    delivered_at = UTCDateTimeField("delivered at", null=True)
    retried_at = UTCDateTimeField("retried at", null=True)

    objects = RelayManager()

    class Meta:
        managed = False
        db_table = outbox.name
        verbose_name = "outbox event"
        ordering = ("-updated_at",)
        default_permissions = ("view",)
        permissions = [
            ("retry_outboxevent", "Can retry outbox events"),
            ("discard_outboxevent", "Can discard outbox events"),
        ]

    def __str__(self) -> str:
        return f"{self.destination} / {self.event_id}"


class Attempt(models.Model):
    """One row of ``relay_attempts``: one recorded delivery attempt of an outbox event."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    event: models.ForeignKey[OutboxEvent, OutboxEvent] = models.ForeignKey(
        OutboxEvent,
        on_delete=models.DO_NOTHING,
        db_column="outbox_id",
        db_constraint=False,
        related_name="history",
    )
    attempt: models.IntegerField[int, int] = models.IntegerField("#")
    at = UTCDateTimeField()
    status: models.IntegerField[int | None, int | None] = models.IntegerField(
        "HTTP status", null=True
    )
    verdict: models.CharField[str, str] = models.CharField(max_length=16)
    detail: models.TextField[str | None, str | None] = models.TextField(null=True)

    objects = RelayManager()

    class Meta:
        managed = False
        db_table = attempts.name
        ordering = ("id",)
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"attempt {self.attempt}"
