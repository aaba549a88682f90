"""The Django app: reads ``settings.RELAY`` at start and builds the process's enqueuer.

``ready()`` never raises for a bad relay setting: it keeps the ConfigError, which
``manage.py check`` (and so ``runserver`` and ``migrate``) reports as ``relay.E001`` and the
first enqueue raises. The enqueuer opens no connection until its first write, so an app built
before gunicorn's ``--preload`` fork shares none with the workers.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.core.signals import setting_changed

from relay.contrib.django.checks import settings_messages
from relay.contrib.django.conf import DjangoRelay, read_settings
from relay.enqueue import Enqueuer, configure
from relay.errors import ConfigError

LABEL = "relay"


class RelayConfig(AppConfig):
    """``INSTALLED_APPS = [..., "relay.contrib.django"]``."""

    name = "relay.contrib.django"
    label = LABEL
    verbose_name = "Relay"
    default_auto_field = "django.db.models.BigAutoField"

    relay: DjangoRelay | None = None
    error: ConfigError | None = None
    _enqueuer: Enqueuer | None = None

    def ready(self) -> None:
        checks.register(check_relay, LABEL)
        # override_settings(RELAY=...) in a project's tests reads the settings again.
        setting_changed.connect(self._setting_changed, dispatch_uid="relay.contrib.django")
        self.load()

    def load(self) -> None:
        """Read ``settings.RELAY`` over the environment and make the process's enqueuer."""
        try:
            relay = read_settings(getattr(settings, "RELAY", None))
        except ConfigError as exc:
            self.relay, self.error, self._enqueuer = None, exc, None
            return
        # Also the default of relay.enqueue(): one enqueuer, with the project's settings.
        self.relay, self.error, self._enqueuer = relay, None, configure(relay.settings)

    def _setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == "RELAY":
            self.load()

    @property
    def enqueuer(self) -> Enqueuer:
        """The enqueuer built from the project's settings; their ConfigError if invalid."""
        if self.error is not None:
            raise self.error
        assert self._enqueuer is not None
        return self._enqueuer

    @property
    def settings(self) -> DjangoRelay:
        """The relay's settings and database alias; their ConfigError if invalid."""
        if self.error is not None:
            raise self.error
        assert self.relay is not None
        return self.relay


def relay_app() -> RelayConfig:
    """The installed app; a RuntimeError naming the setting when it is not installed."""
    if not apps.is_installed(RelayConfig.name):
        raise RuntimeError(
            'relay.contrib.django is not installed: add "relay.contrib.django" to INSTALLED_APPS'
        )
    config = apps.get_app_config(LABEL)
    assert isinstance(config, RelayConfig)
    return config


def check_relay(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The ``relay`` system check: the settings read at start, and the admin's database."""
    config = relay_app()
    admin = apps.is_installed("django.contrib.admin")
    return settings_messages(config.relay, config.error, settings.DATABASES, admin=admin)
