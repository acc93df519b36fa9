"""A small real filesystem for fault tests: a tmpfs mounted (as root) that can fill up and
be turned read-only, like a disk running out of space or remounted after an I/O error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


class TinyFS:
    """A mounted tmpfs of ``size`` bytes."""

    def __init__(self, path: Path):
        self.path = path
        self._filler = path / "filler.bin"

    def fill(self) -> None:
        """Fill the filesystem until writes fail with ENOSPC."""
        with open(self._filler, "ab") as fh:
            chunk = bytes(64 * 1024)
            try:
                while True:
                    fh.write(chunk)
                    fh.flush()
            except OSError:
                pass
        with contextlib.suppress(OSError), open(self._filler, "ab") as fh:
            while True:  # the last pages, a byte block at a time
                fh.write(bytes(512))
                fh.flush()

    def free(self) -> None:
        """Remove the filler: the disk has room again."""
        self._filler.unlink(missing_ok=True)

    def readonly(self) -> None:
        """Remount read-only (what the kernel does after an I/O error)."""
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def writable(self) -> None:
        """Remount read-write."""
        subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)


@contextlib.contextmanager
def tiny_fs(size: str = "4m"):
    """Mount a tmpfs of ``size``; skip the test where mounting is not allowed (not root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="gw-tinyfs-"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield TinyFS(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()
