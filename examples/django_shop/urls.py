from __future__ import annotations

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),  # the relay's outbox is under "Relay"
    path("pay", views.pay),
    path("ping", views.ping),
]
