"""Built-in strategies, installed as ``ttscale.strategies`` and registered by entry point."""
