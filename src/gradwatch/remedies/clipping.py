"""Gradient clipping: global norm, value, adaptive (unit-wise), and a one-line optimizer hook.

These run every training step, so nothing here waits for the device: no ``.item()``, no
Python branch on a tensor value. Norms use fused ``torch._foreach_*`` kernels per
(device, dtype) group, as ``torch.nn.utils.clip_grad_norm_`` does (which, unlike these,
falls back to a Python loop on CPU). Each function returns a :class:`ClipResult` of
tensors that a Monitor can record later without a sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.monitor.listeners import notify_clip
from gradwatch.remedies._targets import check_positive

Params = nn.Module | Tensor | Iterable[Tensor]


def _publish(result: ClipResult, params: list[Tensor]) -> ClipResult:
    # a watching Monitor records the pre-clip norm and the factor applied (``clip_norm``,
    # ``clip_coef``) through the watch layer's public listener API; tensors only, no sync
    notify_clip(result, params)
    return result


class ClipResult(NamedTuple):
    """What one clipping call saw and did, as 0-dim tensors (read them off the hot path).

    Attributes:
        total_norm: global L2 norm of the gradients before clipping.
        clip_coef: ‖g after‖ / ‖g before‖; 1 when nothing was clipped.

    """

    total_norm: Tensor
    clip_coef: Tensor

    @property
    def clipped(self) -> Tensor:
        """0-dim bool tensor: whether the clipping changed the gradients."""
        return self.clip_coef < 1.0


def clip_grad_norm_(params_or_model: Params, max_norm: float) -> ClipResult:
    """Rescale all gradients together so that their global L2 norm is at most ``max_norm``.

    ‖g‖ = √(Σ_p ‖g_p‖²);  g ← g · min(1, max_norm / (‖g‖ + 1e-6)).

    The same gradients as ``torch.nn.utils.clip_grad_norm_``, with fused kernels on every
    device; ``result.total_norm`` is what torch's returns, ``result.clip_coef`` the factor
    applied. A non-finite norm gives non-finite gradients (no check: it would sync).

    Args:
        params_or_model: a module, a tensor or an iterable of tensors; those with a
            ``.grad`` are clipped in place.
        max_norm: the largest global norm allowed (Pascanu et al. suggest ½ to 10× the
            average norm).

    Returns:
        ClipResult(total_norm before clipping, clip_coef applied).

    References:
        Pascanu, Mikolov, Bengio 2013, "On the difficulty of training recurrent neural
        networks", Algorithm 1.

    """
    check_positive("max_norm", max_norm)
    params = _params(params_or_model)
    groups = _grads_by_device(params)
    total = _global_norm(groups)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads in groups:
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return _publish(ClipResult(total, coef), params)


def clip_grad_value_(params_or_model: Params, clip_value: float) -> ClipResult:
    """Clamp every gradient entry to [−clip_value, clip_value].

    Args:
        params_or_model: a module, a tensor or an iterable of tensors.
        clip_value: the largest absolute value allowed.

    Returns:
        ClipResult(global norm before, norm after / norm before).

    """
    check_positive("clip_value", clip_value)
    params = _params(params_or_model)
    groups = _grads_by_device(params)
    before = _global_norm(groups)
    for grads in groups:
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    return _publish(ClipResult(before, _ratio(_global_norm(groups), before)), params)


def adaptive_clip_grad_(
    params_or_model: Params, clipping: float = 0.01, eps: float = 1e-3
) -> ClipResult:
    """Adaptive gradient clipping (AGC): clip each unit's gradient relative to its weight.

    For each unit i (a row of a weight matrix, an output channel of a conv kernel; a bias
    or other vector as a whole):

        if ‖g_i‖ / max(‖w_i‖, eps) > λ:   g_i ← λ · max(‖w_i‖, eps) / ‖g_i‖ · g_i

    so no step changes a unit's weights by more than a fraction λ of their norm. Brock et
    al. do not clip the final classifier: pass the other parameters to leave it out. One
    pass of a few tensor ops per parameter (unit norms have no fused kernel).

    Args:
        params_or_model: a module, a tensor or an iterable of tensors (the weights).
        clipping: λ, the largest allowed ‖g_i‖/‖w_i‖ (0.01 to 0.16 in the paper).
        eps: floor on ‖w_i‖, so zero-initialised units can still move.

    Returns:
        ClipResult(global norm before, norm after / norm before).

    References:
        Brock, De, Smith, Simonyan 2021, "High-Performance Large-Scale Image Recognition
        Without Normalization", Section 4.1.

    """
    check_positive("clipping", clipping)
    check_positive("eps", eps)
    before_sq, after_sq = [], []
    params = _params(params_or_model)
    for p in params:
        if p.grad is None:
            continue
        g, w = p.grad.detach(), p.detach()
        g_norm, w_norm = _unit_norms(g), _unit_norms(w)
        limit = w_norm.clamp(min=eps) * clipping  # λ · max(‖w_i‖, eps)
        g.mul_(torch.where(g_norm > limit, limit / g_norm.clamp(min=1e-12), 1.0))
        # a clipped unit ends with norm `limit`: both totals come from the unit norms
        before_sq.append(g_norm.double().square().sum())
        after_sq.append(torch.minimum(g_norm, limit).double().square().sum())
    if not before_sq:
        return _nothing()
    device = before_sq[0].device
    total = torch.stack([t.to(device) for t in before_sq]).sum().sqrt()
    after = torch.stack([t.to(device) for t in after_sq]).sum().sqrt()
    return _publish(ClipResult(total.float(), _ratio(after, total).float()), params)


def _unit_norms(x: Tensor) -> Tensor:
    """L2 norm per output unit (over every dim but the first), kept broadcastable to ``x``."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


class ClipHook:
    """The handle :func:`clip_on_step` returns: ``remove()`` it; ``last`` is the last result."""

    def __init__(self) -> None:
        self.last: ClipResult | None = None
        self._handle: RemovableHandle | None = None

    def remove(self) -> None:
        """Stop clipping: remove the optimizer hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def clip_on_step(
    optimizer: torch.optim.Optimizer,
    max_norm: float | None = None,
    clip_value: float | None = None,
    agc: float | None = None,
) -> ClipHook:
    """Clip the gradients of an optimizer's parameters before each of its steps.

    One line in a training loop: ``clip_on_step(opt, max_norm=1.0)``. Registers an
    optimizer step pre-hook that calls :func:`clip_grad_norm_`, :func:`clip_grad_value_` or
    :func:`adaptive_clip_grad_` (with λ = ``agc``) on every parameter of every param group.
    With a ``GradScaler`` the hook runs after unscaling, on the true gradients.

    Args:
        optimizer: any torch optimizer.
        max_norm: clip the global norm to this.
        clip_value: or clamp each entry to ±clip_value.
        agc: or apply adaptive clipping with this λ.

    Returns:
        A :class:`ClipHook`; ``hook.last`` holds the :class:`ClipResult` of the last step and
        ``hook.remove()`` stops clipping.

    Raises:
        GradwatchValueError: not exactly one of the three given, or a non-positive value.

    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise GradwatchTypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    options = {"max_norm": max_norm, "clip_value": clip_value, "agc": agc}
    given = {k: v for k, v in options.items() if v is not None}
    if len(given) != 1:
        raise GradwatchValueError(
            "clip_on_step needs exactly one of max_norm, clip_value or agc, "
            f"got {given or 'none'}; e.g. clip_on_step(optimizer, max_norm=1.0)"
        )
    [(kind, value)] = given.items()
    check_positive(kind, value)
    clip = {
        "max_norm": clip_grad_norm_,
        "clip_value": clip_grad_value_,
        "agc": adaptive_clip_grad_,
    }[kind]
    hook = ClipHook()

    def pre_step(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        hook.last = clip([p for group in opt.param_groups for p in group["params"]], value)

    hook._handle = optimizer.register_step_pre_hook(pre_step)
    return hook


def _params(params_or_model: Params) -> list[Tensor]:
    if isinstance(params_or_model, nn.Module):
        return list(params_or_model.parameters())
    if isinstance(params_or_model, Tensor):
        return [params_or_model]
    if isinstance(params_or_model, Iterable):
        params = list(params_or_model)
        if all(isinstance(p, Tensor) for p in params):
            return params
    raise GradwatchTypeError(
        "params_or_model must be an nn.Module, a tensor or an iterable of tensors "
        f"(e.g. model.parameters()), got {type(params_or_model).__name__}"
    )


def _grads_by_device(params_or_model: Params) -> list[list[Tensor]]:
    """Group the gradients by (device, dtype), so each group is one fused kernel call."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in _params(params_or_model):
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad.detach())
    return list(groups.values())


def _global_norm(groups: list[list[Tensor]]) -> Tensor:
    if not groups:
        return torch.zeros(())
    device = groups[0][0].device
    per_group = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))) for g in groups]
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in per_group]))


def _ratio(after: Tensor, before: Tensor) -> Tensor:
    """Return after / before, and 1 where before is 0 (nothing to clip)."""
    return torch.where(before > 0, after / before.clamp(min=1e-30), 1.0)


def _nothing() -> ClipResult:
    return ClipResult(torch.zeros(()), torch.ones(()))
