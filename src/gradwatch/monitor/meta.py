"""The run's ``meta.json`` content, built from a Monitor's state."""

from __future__ import annotations

import os
import platform
import time
import warnings
from typing import Any

import numpy as np
import torch

from gradwatch.monitor.options import SETTINGS
from gradwatch.store.format import FORMAT_VERSION
from gradwatch.structure import describe


def build_meta(mon: Any, status: str) -> dict[str, Any]:
    """The meta.json dictionary of a :class:`~gradwatch.monitor.Monitor` in its current state."""
    loop, layers = mon._loop, mon.layers
    tracker = loop.tracker
    order = tracker.exec_order + [i for i in range(len(layers)) if i not in tracker.exec_order]
    n_params = sum(p.numel() for p in mon.model.parameters())
    return {
        "format_version": FORMAT_VERSION,
        "name": mon.name,
        "status": status,
        "started": mon._started,
        "updated": time.time(),
        "steps_seen": loop.step,
        "steps_recorded": loop.n_recorded,
        "layers": [layers[i].name for i in order],
        "layer_order": "execution" if tracker.exec_order else "registration",
        "diagnosed": mon._session.diagnosed if mon._session is not None else False,
        "layer_info": {
            ly.name: {
                "type": ly.type_name,
                "params": int(sum(p.numel() for p in ly.parameters())),
                "shapes": [list(p.shape) for p in ly.parameters()],
                # the layer's first tensor output at its first recorded forward, batch
                # dimension included (None until a recorded forward has run)
                "out_shape": tracker.out_shape.get(li),
            }
            for li, ly in enumerate(layers)
        },
        "activations": {
            name: {"type": type(m).__name__, "family": fam}
            for name, m, fam in mon._ctx.activations
        },
        # torch.nn types and the autograd graph (gradwatch.structure): residual joins,
        # normalization, recurrence, attention; None if it could not be read
        "structure": mon._structure,
        "model": {
            "class": type(mon.model).__name__,
            "parameters": int(n_params),
            "trainable": int(sum(p.numel() for p in mon.model.parameters() if p.requires_grad)),
            "repr": repr(mon.model)[:20000],
        },
        "settings": {
            "every": mon.every if isinstance(mon.every, int | str) else repr(mon.every),
            "detail_every": mon.detail_every,
            "stats": list(mon.stats),
            "optimizer": [type(o).__name__ for o in mon._ctx.optimizers] or None,
            "scaler": type(mon._ctx.scaler).__name__ if mon._ctx.scaler is not None else None,
            "flush_every": mon.flush_every,
            "flush_secs": mon.flush_secs,
            # watch(precision=, loss_scale=), only when set (the rules read them)
            **({"precision": mon._ctx.precision, "loss_scale": mon._ctx.loss_scale}
               if mon._ctx.precision is not None or mon._ctx.loss_scale != 1.0 else {}),
            # config= merged in; a key naming one of the settings above stays in "config"
            **{k: v for k, v in mon._config.items() if k not in SETTINGS},
        },
        "config": mon._config or None,
        "versions": {
            "gradwatch": _version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "host": {"pid": os.getpid(), "platform": platform.platform()},
        "distributed": {"world_size": mon.world_size} if mon._dist else None,
    }


def _version() -> str:
    from gradwatch.version import __version__

    return __version__


def describe_structure(model: torch.nn.Module, loss: torch.Tensor | None) -> dict[str, Any] | None:
    """:func:`gradwatch.structure.describe`, or None if it fails: it must never stop training."""
    try:
        return describe(model, loss)
    except Exception as exc:  # noqa: BLE001 - a structure bug must not stop training
        warnings.warn(
            f"gradwatch: could not read the model's structure ({exc!r}); the diagnosis will "
            "not know about its residual connections",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
