"""The version of gradwatch (a bottom-layer module: every layer may read it)."""

__version__ = "0.1.0"
