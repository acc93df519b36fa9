"""Checks of command-line options shared by the commands, done before any work starts.

Each raises a gradwatch error naming the option, which ``gradwatch.cli`` prints as one line
with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

from gradwatch.argcheck import check_out_dir, check_out_file, refuse_symlink
from gradwatch.errors import GradwatchValueError

#: Largest seed accepted: NumPy and scikit-learn take seeds below 2**32.
MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> int:
    """``--seed`` must lie in [0, 2**32 - 1]."""
    if not 0 <= seed <= MAX_SEED:
        raise GradwatchValueError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    return seed


def check_at_least(option: str, value: int, minimum: int = 1) -> int:
    """An integer option must be >= ``minimum``."""
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise GradwatchValueError(f"{option} must be {what}, got {value}")
    return value


def out_dir(option: str, value: str | None) -> Path | None:
    """A folder option (created if missing): not empty, not a file, not below one, not a link.

    gradwatch does not write through a symbolic link, which may have been planted.
    """
    return None if value is None else refuse_symlink(option, check_out_dir(option, value))


def out_file(option: str, value: str | None) -> Path | None:
    """A file option: not empty, not a folder, not below a file."""
    return None if value is None else check_out_file(option, value)

