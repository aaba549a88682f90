"""``/pay`` reports the order to Servoki once its transaction commits; ``/ping`` does not."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import relay
from relay.contrib.django import enqueue_on_commit


@csrf_exempt  # an API endpoint of the example; a form view keeps Django's CSRF check
@require_POST
def pay(request: HttpRequest) -> JsonResponse:
    order = json.loads(request.body)
    try:
        with transaction.atomic():
            # ... mark the order paid here: the event is queued only if this commits.
            event_id = enqueue_on_commit(
                "servoki",
                {"event_type": "purchase", "value": order["value"], "currency": order["currency"]},
                event_id=f"order_{order['id']}",
            )
    except relay.InvalidEvent as exc:
        return JsonResponse({"error": str(exc)}, status=400)  # rolled back, nothing queued
    return JsonResponse({"order": order["id"], "event_id": event_id})


@csrf_exempt
@require_POST
def ping(request: HttpRequest) -> JsonResponse:
    order = json.loads(request.body)
    return JsonResponse({"order": order["id"]})
