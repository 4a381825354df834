"""Suite-wide pytest fixtures."""
