"""Fast tests that need no server and no database: validation (and its properties), settings and
destination URLs, redaction, budget maths, outcome classification, the sandbox's rules, the Redis
scripts' keys, migrations free of application imports.

The fast loop, in seconds (no Redis, PostgreSQL, sandbox or worker starts)::

    .venv/bin/python -m pytest -q tests/unit

``tests/unit/conftest.py`` fails a test here that asks for a server fixture or starts a
process: such a test belongs in ``tests/integration``.
"""
