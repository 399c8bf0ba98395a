"""platypus_utils: the package behind the Platypus notebooks (one module per stage)."""

__version__ = "0.1.0"
