"""Tests against real Redis, PostgreSQL, SQLite, HTTP servers and worker processes."""
