"""The process a worker or beat runs in: settings, the embedded Redis, the metrics directory.

Settings are read once, here, at the entry point. This module runs before anything that loads
prometheus-client (``tasks/__init__.py`` imports it first), because prometheus-client picks its
value store when it is first imported: with ``RELAY_METRICS_PORT`` set, every pool child then
writes its own file in ``PROMETHEUS_MULTIPROC_DIR`` and the main process serves their sum
(:mod:`relay.ops.exporter`). It imports only what cannot load prometheus-client.
"""

from __future__ import annotations

import os
from pathlib import Path

from relay.queue import embedded
from relay.settings import Settings, load_settings

settings: Settings = load_settings()
settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # beat's schedule lives there
if settings.embedded_redis:
    embedded.ensure_running(settings.home)
if settings.metrics_port is not None:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str((settings.home / "metrics").resolve()))
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
