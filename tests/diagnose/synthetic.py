"""Build a Run from chosen numbers, to test each rule's thresholds exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from gradwatch.store.reader import Run


def make_run(
    n_layers: int,
    stats: dict[str, np.ndarray],
    *,
    loss: list[float] | None = None,
    extra: list[tuple[int, str, str, float]] = (),
    types: dict[str, str] | None = None,
    families: tuple[str, ...] = ("rectifier",),
    checkup: dict | None = None,
    repr_: str = "Sequential(...)",
    structure: dict | None = None,
    norm: tuple[str, ...] = (),
    shapes: dict[str, list[int]] | None = None,
) -> Run:
    """A run with layers l0 (input side) .. l{n-1} and steps 0 .. S-1.

    ``stats[name]`` is an (S, n) array; NaN entries are left unrecorded. ``extra`` rows
    (step, layer, stat, value) are added as they are, e.g. genuine NaN values. ``norm`` names
    the normalisation layers and ``structure`` adds to ``meta["structure"]`` (as
    ``gradwatch.structure.describe`` writes it); ``shapes`` gives each layer's ``out_shape``
    (batch dimension first).
    """
    layers = [f"l{i}" for i in range(n_layers)]
    rows = []
    for stat, arr in stats.items():
        arr = np.atleast_2d(np.asarray(arr, dtype=np.float64))
        for s in range(arr.shape[0]):
            for j, ly in enumerate(layers):
                if not np.isnan(arr[s, j]):
                    rows.append((s, ly, stat, float(arr[s, j])))
    if loss is not None:
        rows += [(s, "", "loss", float(v)) for s, v in enumerate(loss)]
    rows += list(extra)
    df = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    types = types or {}
    meta = {
        "format_version": 1,
        "layers": layers,
        "layer_info": {ly: {"type": types.get(ly, "Linear")} for ly in layers},
        "activations": {f"a{i}": {"type": "X", "family": f} for i, f in enumerate(families)},
        "model": {"repr": repr_},
    }
    meta["structure"] = {
        "norm_layers": list(norm),
        "has_norm": bool(norm),
        "residual": False,
        "attention": False,
        "recurrent": False,
        **(structure or {}),
    }
    for ly, shape in (shapes or {}).items():
        meta["layer_info"][ly]["out_shape"] = list(shape)
    if checkup is not None:
        meta["checkup"] = checkup
    return Run(meta=meta, stats=df, path=None)


def geometric(factor: float, n_layers: int, n_steps: int = 1, top: float = 1.0) -> np.ndarray:
    """backprop_norm = top * factor^(layers between it and the output side), every step."""
    row = top * factor ** np.arange(n_layers - 1, -1, -1, dtype=np.float64)
    return np.tile(row, (n_steps, 1))


def const(value: float, n_layers: int, n_steps: int = 1) -> np.ndarray:
    return np.full((n_steps, n_layers), float(value))


def by_kind(findings, kind):
    """The findings of one kind, after checking that every finding's evidence is JSON-clean."""
    out = [f for f in findings if f.kind == kind]
    for f in findings:
        json.dumps(f.to_dict(), allow_nan=False)
    return out


def one(findings, kind):
    """The one finding of a kind (fails unless there is exactly one)."""
    (f,) = by_kind(findings, kind)
    return f
