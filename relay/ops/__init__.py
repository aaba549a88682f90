"""What operators see and do: status, health, the outbox rows, pauses, the metrics exporter.

admin.py      Admin: the operator facade over Redis and the outbox, typed results
reports.py    the typed results Admin returns (status, event details, selections)
exporter.py   the Prometheus exporter: the worker's counters and gauges read at each scrape
"""

from relay.ops.admin import Admin

__all__ = ["Admin"]
