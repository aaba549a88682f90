"""Helpers shared by the tests: services, fault tooling, CLI state builders."""
