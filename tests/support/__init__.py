"""Helpers shared by the tests: services, fault tooling, CLI state builders, payload strategies,
the fallback's refusals, a limiter for one scope, misbehaving APIs, enqueue-and-read-back."""
