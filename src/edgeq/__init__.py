"""edgeq: take a transformer to an edge device, and tell the truth about what was measured."""

__version__ = "0.1.0"
