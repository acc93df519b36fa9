"""Real files and folders the bad-input catalogue points arguments at.

A bad value that is a path is a :class:`Place`: the name of one of these, resolved against a
temporary folder made once per test session (a missing path, a file where a folder is wanted,
an empty folder, a folder with a foreign ``meta.json``, a recorded run, ...).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw


@dataclass(frozen=True)
class Place:
    """A path argument, named by what it is; resolved with :func:`resolve`."""

    name: str

    def __repr__(self) -> str:
        return self.name


MISSING = Place("missing")  # nothing there
A_FILE = Place("a_file")  # a plain file, where a folder is wanted
EMPTY_DIR = Place("empty_dir")  # a folder with nothing in it
FOREIGN = Place("foreign")  # a folder whose meta.json is not gradwatch's
IN_MISSING = Place("in_missing")  # a path inside a folder that does not exist
UNDER_FILE = Place("under_file")  # a path below a plain file
A_RUN = Place("a_run")  # a real recorded run (a folder, where a file is wanted)
BAD_STRUCTURE = Place("bad_structure")  # a run whose meta.json "structure" is not an object
UNWRITABLE = Place("unwritable")  # a folder nobody may create files in (not even root)
LONG_NAME = Place("long_name")  # a path with a 300-byte name in it


@dataclass(frozen=True)
class OutPlace:
    """An output path that does not exist yet, in a new folder of its own for each case."""

    name: str

    def __repr__(self) -> str:
        return f"new/{self.name}"


def make_places(root: Path) -> dict[str, Path]:
    """Create the places under ``root`` and return name -> path."""
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a run\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "meta.json").write_text(json.dumps({"hello": 1}))
    (root / "factory.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))\n"
        "def boom():\n    raise RuntimeError('factory failed')\n"
        "def make_int():\n    return 3\n"
        "NOT_CALLABLE = 5\n"
        "def batchnorm():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))\n"
        "def scripted():\n    import torch\n    return torch.jit.script(make())\n"
    )
    (root / "broken.py").write_text("raise ImportError('broken on import')\n")
    (root / "notes.txt").write_text("make = 1\n")
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, run_dir=root / "a_run", optimizer=opt) as _:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
    shutil.copytree(root / "a_run", root / "bad_structure")
    meta = json.loads((root / "bad_structure" / "meta.json").read_text())
    meta["structure"] = ["residual"]
    (root / "bad_structure" / "meta.json").write_text(json.dumps(meta))
    return {
        "bad_structure": root / "bad_structure",
        "unwritable": _unwritable(root) / "out",
        "long_name": root / ("n" * 300) / "out",
        "missing": root / "nothing" / "here",
        "a_file": root / "a_file",
        "empty_dir": root / "empty_dir",
        "foreign": root / "foreign",
        "in_missing": root / "no_such_folder" / "out.html",
        "under_file": root / "a_file" / "out",
        "a_run": root / "a_run",
        "factory": root / "factory.py",
        "broken": root / "broken.py",
        "notes": root / "notes.txt",
        "root": root,
    }


def _unwritable(root: Path) -> Path:
    """A folder in which creating a file fails: /sys for root (whom permissions do not stop),
    a folder without write permission otherwise."""
    if os.geteuid() == 0 and Path("/sys").is_dir():
        return Path("/sys")
    folder = root / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def resolve(value: object, places: dict[str, Path]) -> object:
    """Turn a :class:`Place` or :class:`OutPlace` into a path string; others pass through."""
    if isinstance(value, Place):
        return str(places[value.name])
    if isinstance(value, OutPlace):
        folder = places["root"] / "out" / f"{next(_COUNTER)}"
        folder.mkdir(parents=True)
        return str(folder / value.name)
    return value


_COUNTER = itertools.count()
