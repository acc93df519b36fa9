"""The run directory: background writer and reader."""

from gradwatch.store.reader import Run, load

__all__ = ["Run", "load"]
