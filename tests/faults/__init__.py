"""Fault tests: real kills, restarts, full Redis and skewed clocks."""
