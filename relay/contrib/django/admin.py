"""The outbox in the Django admin: find failed events, read them, retry or discard them.

Read-only but for two actions, which go through :class:`relay.ops.Admin` as ``relay outbox
retry|discard`` do: same selection (named events of each destination, those in another status
skipped), same guarded update. Texts that could carry a key (last errors, attempt details) were
redacted by their destination when stored, and pass through that redaction again here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import closing
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from relay.contrib.django.apps import LABEL, relay_app
from relay.contrib.django.models import Attempt, OutboxEvent
from relay.errors import RelayError
from relay.ops import Admin
from relay.ops.reports import Skipped
from relay.outbox.queries import DISCARDABLE, RETRYABLE, reason_of
from relay.outbox.schema import Status
from relay.settings import Settings

_redactors: dict[int, Admin] = {}


def redact(text: str | None) -> str:
    """``text`` through the configured destinations' own redaction."""
    settings = relay_app().settings.settings
    redactor = _redactors.get(id(settings))
    if redactor is None:
        _redactors.clear()  # the settings changed (override_settings): one redactor at a time
        # Never connects: only the destinations' redaction is used.
        redactor = _redactors[id(settings)] = Admin(settings, start_embedded=False)
    return redactor.redact(text or "")


def has_perm(request: HttpRequest, codename: str) -> bool:
    """Whether the user holds the relay app's permission ``codename``."""
    return bool(request.user.has_perm(f"{LABEL}.{codename}"))  # type: ignore[union-attr]


def reason_filter(reason: str) -> Q:
    """Dead rows of one :func:`~relay.outbox.queries.reason_of` label, as
    :func:`~relay.outbox.queries.reason_clause` selects them for ``--reason``."""
    digits = reason.strip().upper().removeprefix("HTTP").strip()
    if digits.isdigit():
        return Q(status=Status.DEAD.value, last_status=int(digits))
    return Q(status=Status.DEAD.value, last_error__icontains=reason.strip())


class DeadReasonFilter(admin.SimpleListFilter):
    """Dead rows by reason (``HTTP 404``, ``timeout``): the labels of ``relay status``."""

    title = "dead reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        answers = (
            OutboxEvent.objects.filter(status=Status.DEAD.value)
            .values_list("last_status", "last_error")
            .distinct()
        )
        labels = sorted({reason_of(status, error) for status, error in answers})
        return [(label, label) for label in labels]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(reason_filter(value)) if value else queryset


class AttemptInline(admin.TabularInline):  # type: ignore[type-arg]
    """Every recorded attempt of the event, oldest first."""

    model = Attempt
    fields = readonly_fields = ("attempt", "at", "status", "verdict", "response")
    extra = 0
    can_delete = False

    @admin.display(description="detail (response or error)")
    def response(self, attempt: Attempt) -> str:
        return redact(attempt.detail)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return has_perm(request, "view_outboxevent")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The outbox: read-only, with retry and discard actions."""

    list_display = (
        "event_id",
        "destination",
        "status",
        "attempts",
        "last_status",
        "reason",
        "updated_at",
    )
    list_filter = ("status", "destination", DeadReasonFilter)
    search_fields = ("=event_id",)  # exact, as `relay outbox show`: served by its index
    search_help_text = "The exact event id."
    show_full_result_count = False
    inlines = (AttemptInline,)
    actions = ("retry", "discard")
    fieldsets = (
        (None, {"fields": ("event_id", "destination", "status", "reason", "payload_json")}),
        ("Attempts", {"fields": ("attempts", "last_status", "error")}),
        (
            "Times",
            {
                "fields": (
                    "enqueued_at",
                    "created_at",
                    "retried_at",
                    "updated_at",
                    "next_attempt_at",
                    "delivered_at",
                )
            },
        ),
    )
    readonly_fields = (
        "event_id",
        "destination",
        "status",
        "reason",
        "payload_json",
        "attempts",
        "last_status",
        "error",
        "enqueued_at",
        "created_at",
        "retried_at",
        "updated_at",
        "next_attempt_at",
        "delivered_at",
    )

    @admin.display(description="dead reason")
    def reason(self, event: OutboxEvent) -> str:
        if event.status != Status.DEAD.value:
            return "-"
        return reason_of(event.last_status, event.last_error)

    @admin.display(description="payload")
    def payload_json(self, event: OutboxEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    @admin.display(description="last error")
    def error(self, event: OutboxEvent) -> str:
        return redact(event.last_error) or "-"

    # -- read-only: no row is added, changed or deleted by hand ------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "retry_outboxevent")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return has_perm(request, "discard_outboxevent")

    # -- the actions: relay.ops.Admin, as the CLI ---------------------------------------------

    @admin.action(description="Retry the selected dead or discarded events", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        try:
            done, skipped = change(relay_app().settings.settings, "retry", queryset)
        except RelayError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request,
            f"Retried {done} event(s): pending again with attempts and age reset; a worker "
            "sends them on its next round.",
            messages.SUCCESS,
        )
        self._skipped(request, skipped, "retry")

    @admin.action(
        description="Discard the selected dead or pending events", permissions=["discard"]
    )
    def discard(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        try:
            done, skipped = change(relay_app().settings.settings, "discard", queryset)
        except RelayError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request,
            f"Discarded {done} event(s): never sent again, kept until pruned.",
            messages.SUCCESS,
        )
        self._skipped(request, skipped, "discard")

    def _skipped(self, request: HttpRequest, skipped: list[Skipped], verb: str) -> None:
        for row in skipped:
            self.message_user(
                request,
                f"Skipped {row.event_id} ({row.destination}): it is {row.status}, "
                f"which {verb} leaves alone.",
                messages.WARNING,
            )


def change(
    settings: Settings, verb: str, queryset: QuerySet[OutboxEvent]
) -> tuple[int, list[Skipped]]:
    """Retry or discard the rows of ``queryset`` through :class:`relay.ops.Admin`: per
    destination, its events are selected as ``relay outbox retry|discard -d NAME ID…`` select
    them, then changed by the same guarded update. How many changed, and those skipped."""
    allowed = RETRYABLE if verb == "retry" else DISCARDABLE
    by_destination: dict[str, list[str]] = defaultdict(list)
    for destination, event_id in queryset.values_list("destination", "event_id"):
        by_destination[destination].append(event_id)
    done = 0
    skipped: list[Skipped] = []
    with closing(Admin(settings)) as ops:
        for destination, event_ids in sorted(by_destination.items()):
            selection = ops.select(event_ids, destination, allowed)
            skipped += selection.skipped
            if selection.total:
                done += (ops.retry if verb == "retry" else ops.discard)(selection)
    return done, skipped
