"""Shared fixtures: see the fixture modules listed in pytest_plugins."""
