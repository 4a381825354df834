"""Benchmarks that write JSON and markdown reports under reports/ (`glore bench ...`)."""
