"""Small datasets shipped with ttscale; installed as ``ttscale.data``."""
