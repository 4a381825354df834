"""glore test suite."""
