"""Helpers shared by tests: tiny models, fakes, live servers."""
