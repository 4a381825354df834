"""glore: the composition root (command line) of the GLoRe service and training pipeline."""

__version__ = "0.1.0"
