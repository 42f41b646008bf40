"""Built-in verifiers, installed as ``ttscale.verifiers`` and registered by entry point."""
