"""Hostile clients, models and files against the real daemon (a package: its module names may repeat those in tests/e2e)."""
