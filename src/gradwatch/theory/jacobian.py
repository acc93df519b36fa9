"""The singular values of a model's input-output Jacobian at a batch.

For each of the first few examples x of the batch, J = ∂f(x)/∂x on the flattened input and
output (shape (n_out, n_in)); its singular values s_i describe how the network stretches
perturbations. Mean-field theory predicts the mean squared singular value
(1/N) tr(J Jᵀ) = χ1^L; dynamical isometry means all s_i ≈ 1, which needs more than
χ1 = 1: the spread of s_i² grows with depth for Gaussian weights and for ReLU, while
orthogonal weights with tanh can stay near 1.

References: Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of
learning in deep linear neural networks"; Pennington, Schoenholz & Ganguli 2017,
"Resurrecting the sigmoid in deep learning through dynamical isometry".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values of the input-output Jacobian at a few examples.

    Attributes:
        singular_values: array (n_examples, min(n_out, n_in)), each row descending.
        mean_sq_singular_value: mean of s² over all rows: (1/k) tr(J Jᵀ), k = min(n_out, n_in).
        var_sq_singular_value: variance of s² over all rows (the spread of J Jᵀ's spectrum).
        max_singular_value: the largest s over all rows.
        min_singular_value: the smallest s over all rows.
        condition_number: mean over rows of s_max / s_min (inf where s_min = 0).
        n_examples: how many examples the rows come from.

    """

    singular_values: np.ndarray
    mean_sq_singular_value: float
    var_sq_singular_value: float
    max_singular_value: float
    min_singular_value: float
    condition_number: float
    n_examples: int

    def to_dict(self) -> dict[str, Any]:
        """Return the summary numbers (not the singular values) as a plain dict."""
        return {
            "mean_sq_singular_value": self.mean_sq_singular_value,
            "var_sq_singular_value": self.var_sq_singular_value,
            "max_singular_value": self.max_singular_value,
            "min_singular_value": self.min_singular_value,
            "condition_number": self.condition_number,
            "n_examples": self.n_examples,
        }


def jacobian_spectrum(
    model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, n_examples: int = 4
) -> JacobianSpectrum:
    """Return the singular values of ∂model(x)/∂x for the first ``n_examples`` of a batch.

    Each example runs alone (batch of one) in eval mode, so BatchNorm uses its running
    statistics and Dropout is off; the modules' training flags are restored afterwards.

    Args:
        model: an nn.Module (or any function) mapping a batch (B, ...) to a tensor (B, ...).
        inputs: a floating-point batch, first dimension the batch.
        n_examples: how many examples to use (at most the batch size), >= 1.

    Returns:
        A :class:`JacobianSpectrum`.

    Raises:
        GradwatchTypeError: ``inputs`` is not a floating tensor, or ``model`` is not callable
            or returns something other than a tensor.
        GradwatchValueError: empty batch or ``n_examples`` < 1.

    References: Pennington, Schoenholz & Ganguli 2017; Saxe et al. 2014.

    """
    if not callable(model):
        raise GradwatchTypeError(
            f"model must be an nn.Module or a function, got {type(model).__name__}; pass the "
            "network itself"
        )
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        kind = inputs.dtype if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise GradwatchTypeError(
            f"inputs must be a floating-point torch.Tensor batch, got {kind}; pass e.g. "
            "torch.randn(8, n_in)"
        )
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise GradwatchValueError(
            f"inputs must have a batch dimension with at least one example, got shape "
            f"{tuple(inputs.shape)}; pass a batch such as torch.randn(8, n_in)"
        )
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise GradwatchValueError(
            f"n_examples must be a positive int, got {n_examples!r}; pass e.g. n_examples=4"
        )
    n = min(n_examples, inputs.shape[0])
    modes = _eval_mode(model)
    try:
        rows = [_singular_values(model, inputs[i]) for i in range(n)]
    except GradwatchError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise GradwatchValueError(
            f"inputs of shape {tuple(inputs.shape)} do not fit the model: one example through "
            f"it raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
            "pass a batch shaped as the model expects"
        ) from err
    finally:
        _restore_mode(modes)
    s = np.stack(rows)  # (n, k)
    s2 = s * s
    with np.errstate(divide="ignore"):
        cond = np.where(s[:, -1] > 0, s[:, 0] / s[:, -1], np.inf)
    return JacobianSpectrum(
        singular_values=s,
        mean_sq_singular_value=float(s2.mean()),
        var_sq_singular_value=float(s2.var()),
        max_singular_value=float(s.max()),
        min_singular_value=float(s.min()),
        condition_number=float(cond.mean()),
        n_examples=n,
    )


def _singular_values(model: Callable, x: torch.Tensor) -> np.ndarray:
    shape = x.shape
    x_flat = x.detach().reshape(-1).clone()

    def f(v: torch.Tensor) -> torch.Tensor:
        out = model(v.reshape(1, *shape))
        if not isinstance(out, torch.Tensor):
            raise GradwatchTypeError(
                f"model must return a tensor, got {type(out).__name__}; wrap it so that it "
                "returns the output tensor only"
            )
        return out.reshape(-1)

    with torch.enable_grad():
        try:  # one vmapped backward pass for all output coordinates
            jac = torch.autograd.functional.jacobian(f, x_flat, vectorize=True)
        except GradwatchTypeError:
            raise
        except RuntimeError:  # a module vmap cannot batch through: one pass per output
            jac = torch.autograd.functional.jacobian(f, x_flat)  # (n_out, n_in)
    return torch.linalg.svdvals(jac.detach().double()).numpy()


def _eval_mode(model: Callable) -> list[tuple[nn.Module, bool]]:
    if not isinstance(model, nn.Module):
        return []
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def _restore_mode(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training
