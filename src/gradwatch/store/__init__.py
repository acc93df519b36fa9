"""The run directory: lifecycle (rundir), lock, background writer and reader."""

from gradwatch.store.lock import LockInfo, read_lock
from gradwatch.store.reader import Run, load
from gradwatch.store.rundir import RunDirectory, run_state

__all__ = ["LockInfo", "Run", "RunDirectory", "load", "read_lock", "run_state"]
