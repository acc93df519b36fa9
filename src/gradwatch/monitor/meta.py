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


class MetaMixin:
    """Mixin of :class:`~gradwatch.monitor.Monitor`: the meta.json dictionary."""

    # ------------------------------------------------------------------------------ meta
    def _meta(self, status: str) -> dict[str, Any]:
        order = self._exec_order + [i for i in range(len(self.layers)) if i not in self._exec_order]
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "status": status,
            "started": self._started,
            "updated": time.time(),
            "steps_seen": self._step,
            "steps_recorded": self._n_recorded,
            "layers": [self._layer_names[i] for i in order],
            "layer_order": "execution" if self._exec_order else "registration",
            "diagnosed": self._diagnosed,
            "layer_info": {
                ly.name: {
                    "type": ly.type_name,
                    "params": int(sum(p.numel() for p in ly.module.parameters(recurse=False))),
                    "shapes": [list(p.shape) for p in ly.module.parameters(recurse=False)],
                    # the layer's first tensor output at its first recorded forward, batch
                    # dimension included (None until a recorded forward has run)
                    "out_shape": self._out_shape.get(li),
                }
                for li, ly in enumerate(self.layers)
            },
            "activations": {
                name: {"type": type(m).__name__, "family": fam} for name, m, fam in self._acts_info
            },
            # torch.nn types and the autograd graph (gradwatch.structure): residual joins,
            # normalization, recurrence, attention; None if it could not be read
            "structure": self._structure,
            "model": {
                "class": type(self.model).__name__,
                "parameters": int(n_params),
                "trainable": int(
                    sum(p.numel() for p in self.model.parameters() if p.requires_grad)
                ),
                "repr": repr(self.model)[:20000],
            },
            "settings": {
                "every": self.every if isinstance(self.every, int | str) else repr(self.every),
                "detail_every": self.detail_every,
                "stats": list(self.stats),
                "optimizer": [type(o).__name__ for o in self._optimizers] or None,
                "scaler": type(self._scaler).__name__ if self._scaler is not None else None,
                "flush_every": self.flush_every,
                "flush_secs": self.flush_secs,
                # config= merged in; a key naming one of the settings above stays in "config"
                **{k: v for k, v in self._config.items() if k not in SETTINGS},
            },
            "config": self._config or None,
            "versions": {
                "gradwatch": _version(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
            },
            "host": {"pid": os.getpid(), "platform": platform.platform()},
            "distributed": {"world_size": self.world_size} if self._dist else None,
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
