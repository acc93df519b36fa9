"""Remedies that change the training loop, not the model: z-loss, warmup, lr, Adam's ε.

Each is one function with one job, composable with the others and with
:func:`~gradwatch.remedies.clip_on_step` (the fifth: gradient clipping):

- :func:`z_loss`: wrap a loss so that it also pays ``coef · (log Z)²``, which holds the
  output logits' normaliser ``log Z = logsumexp(z)`` near 0 (Chowdhery et al. 2022, PaLM §5;
  Wortsman et al. 2023 §3.2: against output-logit divergence; coefficient 1e-4);
- :func:`warmup`: a linear learning-rate warmup from ``lr / steps`` to ``lr`` (Goyal et al.
  2017; Xiong et al. 2020 for post-LN transformers);
- :func:`lower_lr_`: multiply every group's learning rate by a factor, in place;
- :func:`adam_eps_`: set Adam's ε, in place (Wortsman et al. 2023 §3.4: ε = 1e-15 when ε
  swamps √v̂ and the update vanishes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies._targets import check_positive

#: z-loss coefficient of Chowdhery et al. 2022 and Wortsman et al. 2023.
Z_LOSS_COEF = 1e-4
#: Adam's ε that Wortsman et al. 2023 recommend when ε swamps the update.
SMALL_EPS = 1e-15


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    t = getattr(output, "logits", None)
    if t is None and isinstance(output, dict):
        t = output.get("logits")
    if not isinstance(t, torch.Tensor):
        raise GradwatchTypeError(
            f"z_loss: the model's output must be a logits tensor or carry .logits / "
            f"['logits'] (a Hugging Face output), got {type(output).__name__}"
        )
    return t


def cross_entropy(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, C) logits, or of (N, T, C) token logits against (N, T) targets."""
    z = _logits(output)
    if z.dim() > 2 and targets.dim() == z.dim() - 1 and targets.shape == z.shape[:-1]:
        z, targets = z.flatten(0, -2), targets.flatten()  # (N, T, C) tokens
    return F.cross_entropy(z, targets)


class ZLoss:
    """``loss_fn(output, targets) + coef · mean((log Z)²)``, a callable loss.

    Attributes:
        loss_fn: the wrapped loss (default: cross-entropy, for (N, C) or (N, T, C) logits).
        coef: the coefficient (default 1e-4).
        dim: the class dimension of the logits (default -1, the last).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor] | None, coef: float, dim: int):
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        self.coef = coef
        self.dim = dim

    def __call__(self, output: Any, targets: Any = None) -> torch.Tensor:
        """The wrapped loss plus the z penalty of ``output``'s logits."""
        z = _logits(output)
        log_z = torch.logsumexp(z.float(), dim=self.dim)
        base = self.loss_fn(output, targets)
        return base + self.coef * log_z.square().mean()

    def __repr__(self) -> str:
        return f"ZLoss(coef={self.coef:g}, dim={self.dim})"


def z_loss(
    loss_fn: Callable[..., torch.Tensor] | None = None,
    coef: float = Z_LOSS_COEF,
    dim: int = -1,
) -> ZLoss:
    """Wrap ``loss_fn`` with z-loss: ``loss + coef · mean over positions of (log Z)²``.

    ``log Z = logsumexp(logits, dim)``; the mean runs over every other dimension (the batch,
    the positions). Cross-entropy is unchanged by a constant added to all logits; z-loss
    pins that constant, so the logits cannot drift (output-logit divergence).

    Args:
        loss_fn: ``loss_fn(output, targets) -> loss``; None: cross-entropy of (N, C) logits,
            or of (N, T, C) token logits against (N, T) targets.
        coef: the coefficient (1e-4 in PaLM and in Wortsman et al. 2023).
        dim: the class dimension of the logits (-1; 1 for ``F.cross_entropy``'s (N, C, T)).

    Returns:
        a :class:`ZLoss`, called as ``loss(output, targets)``; the output may be a Hugging
        Face model output (its ``.logits``).

    Raises:
        GradwatchTypeError: ``loss_fn`` is not callable, or a wrong type for ``coef``/``dim``.
        GradwatchValueError: ``coef`` is not a finite number > 0.

    References:
        Chowdhery et al. 2022, "PaLM", §5; Wortsman et al. 2023, "Small-scale proxies for
        large-scale Transformer training instabilities", §3.2.
    """
    if loss_fn is not None and not callable(loss_fn):
        raise GradwatchTypeError(
            f"loss_fn must be callable as loss_fn(output, targets), got {type(loss_fn).__name__}"
        )
    check_positive("coef", coef)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise GradwatchTypeError(f"dim must be an int (the class dimension), got {dim!r}")
    return ZLoss(loss_fn, float(coef), dim)


def _check_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise GradwatchTypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear learning-rate warmup: ``lr · min(1, (s + 1) / steps)`` at scheduler step s.

    Call ``scheduler.step()`` after each ``optimizer.step()``. Chain it with a decay with
    ``torch.optim.lr_scheduler.SequentialLR`` if you need one.

    Args:
        optimizer: the optimizer (its groups' current ``lr`` are the targets).
        steps: warmup length in optimizer steps.

    Returns:
        the ``LambdaLR`` scheduler.

    Raises:
        GradwatchTypeError: not an optimizer, or ``steps`` not an int.
        GradwatchValueError: ``steps < 1``.

    References:
        Goyal et al. 2017, "Accurate, Large Minibatch SGD"; Xiong et al. 2020.
    """
    _check_optimizer(optimizer)
    n = int(check_positive("steps", steps, integer=True))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / n))


def lower_lr_(optimizer: torch.optim.Optimizer, factor: float = 0.5) -> list[float]:
    """Multiply every parameter group's learning rate by ``factor`` (< 1), in place.

    Returns:
        the new learning rates, one per group.

    Raises:
        GradwatchValueError: ``factor`` not in (0, 1).
    """
    _check_optimizer(optimizer)
    check_positive("factor", factor)
    if factor >= 1:
        raise GradwatchValueError(f"factor must be below 1 to lower the lr, got {factor!r}")
    for group in optimizer.param_groups:
        if "initial_lr" in group:  # a scheduler scales from this
            group["initial_lr"] = group["initial_lr"] * factor
        group["lr"] = group["lr"] * factor
    return [float(g["lr"]) for g in optimizer.param_groups]


def adam_eps_(optimizer: torch.optim.Optimizer, eps: float = SMALL_EPS) -> float:
    """Set the ε of an Adam-family optimizer (every group), in place.

    Returns:
        the previous ε (of the first group).

    Raises:
        GradwatchValueError: the optimizer has no ``eps`` (not Adam-like), or a bad ``eps``.
    """
    _check_optimizer(optimizer)
    check_positive("eps", eps)
    if not all("eps" in g for g in optimizer.param_groups):
        raise GradwatchValueError(
            f"optimizer: {type(optimizer).__name__} has no eps; adam_eps_ applies to Adam, "
            "AdamW and other optimizers with an eps in their parameter groups"
        )
    before = float(optimizer.param_groups[0]["eps"])
    for group in optimizer.param_groups:
        group["eps"] = float(eps)
    return before
