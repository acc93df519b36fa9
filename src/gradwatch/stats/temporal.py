"""``time_grad_first``, ``time_grad_last``, ``time_steps``: the gradient through time.

For a recurrent layer (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``: any ``nn.RNNBase``) the gradient
reaching input step t of its sequence from the loss is a product of Jacobians through the later
steps; it vanishes or explodes geometrically with the lag (Bengio et al. 1994; Pascanu, Mikolov
& Bengio 2013). These statistics record, at detail steps, ‖∂L/∂x_t‖ at the first (t = 0) and
the last (t = T - 1) time step of the layer's input sequence x, and T: the same quantities a
checkup (:class:`gradwatch.probes.TemporalProbe`) measures, read by the ``temporal`` rule as
``time_grad_first / time_grad_last``.

The same two norms are kept for the model's own input when it is a floating ``(N, T, F)``
sequence (``(T, N, F)`` for sequence-first recurrent layers), under the run-level layer
``""``: the flow through time where the signal enters, whatever cell carries it (a loop, a
scan, attention), read by the diagnosis as the layer ``"(input)"``. An input whose first
layer is a convolution is left out (a convolution reads a window of steps by design).

Hot path: a forward pre-hook on the layer (on the model, for its input) takes its input
sequence (raw data, which does not require grad, is replaced by
``x.detach().requires_grad_()``: a view without history) and registers a tensor hook on it;
during backward that hook writes the two norms into the step's buffer, each taken as
``max|g| · ‖g / max|g|‖`` (:func:`scaled_norm`: a plain float32 norm squares entries below
~1e-19 to 0, and the far steps of a vanishing flow live there). A layer called several times
in a step contributes several rows; the host side takes ``sqrt(sum of squared norms)`` over
the calls with the layer's first call's sequence length.

References:
    Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient descent is
    difficult", IEEE TNN 1994. Pascanu, Mikolov & Bengio, "On the difficulty of training
    recurrent neural networks", ICML 2013.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradwatch.stats.registry import define_block, define_statistic

TIME_STATS = ("time_grad_first", "time_grad_last", "time_steps")


def scaled_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖₂ as float32 without underflow: ``max|t| · ‖t / max|t|‖`` (0 for a zero tensor)."""
    t = t.detach()
    if not t.is_floating_point():
        t = t.float()
    top = t.abs().amax().float()
    safe = torch.where(top > 0, top, torch.ones_like(top))
    return top * torch.linalg.vector_norm(t.float() / safe, dtype=torch.float32)


def decode_time(
    values: np.ndarray, key: Sequence[tuple[int, int]]
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Host side: (steps, 2 * calls) norms, key ((layer, T) per call) -> per-layer values."""
    v = values.astype(np.float64).reshape(values.shape[0], -1, 2)
    lis = np.asarray([int(k[0]) for k in key])
    ts = np.asarray([int(k[1]) for k in key])
    layers = sorted(set(lis.tolist()))
    first, last, steps = [], [], []
    for li in layers:
        t0 = ts[lis == li][0]
        sel = (lis == li) & (ts == t0)  # calls of another sequence length are not pooled
        first.append(np.sqrt((v[:, sel, 0] ** 2).sum(axis=1)))
        last.append(np.sqrt((v[:, sel, 1] ** 2).sum(axis=1)))
        steps.append(np.full(v.shape[0], float(t0)))
    if not layers:
        return {}
    return {
        "time_grad_first": (layers, np.stack(first, axis=1)),
        "time_grad_last": (layers, np.stack(last, axis=1)),
        "time_steps": (layers, np.stack(steps, axis=1)),
    }


def _combine(values: np.ndarray, key, world: int):
    # the global d L / d x stacks the ranks' shares of the batch, each scaled by 1/W
    return np.sqrt((values.astype(np.float64) ** 2).sum(axis=0)) / world, key


define_block(
    "time",
    lambda values, key, layout: decode_time(values, key),
    _combine,
    "‖∂L/∂x_0‖, ‖∂L/∂x_(T-1)‖ per recurrent layer call; key: (layer index, T) of each call",
)
define_statistic(
    "time_grad_first", "time", "time", "detail",
    "recurrent layers: L2 norm of d loss / d input at the first time step of the sequence",
    "sqrt(sum over ranks of norm^2) / W: the ranks' shares of the global gradient",
)
define_statistic(
    "time_grad_last", "time", "time", "detail",
    "recurrent layers: L2 norm of d loss / d input at the last time step of the sequence",
    "sqrt(sum over ranks of norm^2) / W: the ranks' shares of the global gradient",
)
define_statistic(
    "time_steps", "time", "time", "detail",
    "recurrent layers: the number T of time steps of the input sequence",
    "rank 0's (every rank's batch has the same sequence length)",
)
