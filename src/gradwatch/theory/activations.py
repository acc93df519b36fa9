"""Activation functions for mean-field theory: name or callable -> values and derivatives.

The mean-field integrals need φ, φ' and φ'' at the quadrature nodes. Named activations
have them in closed form (numpy, see ``_named``). Any elementwise torch callable is
differentiated by autograd on a float64 tensor, exact to rounding wherever it is
differentiable; a numpy callable (one that fails on a torch tensor) falls back to central
finite differences.

References: Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep Information Propagation".
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.theory._named import NAMED, piecewise_linear

#: Slope of "leaky_relu" when the name gives none (PyTorch's default).
DEFAULT_LEAKY_SLOPE = 0.01

#: Every name `resolve_activation` accepts (plus "leaky_relu:SLOPE").
KNOWN_ACTIVATIONS: tuple[str, ...] = tuple(NAMED)

#: Where named activations have a kink (φ or φ' not smooth).
_KINKS = {
    "relu": (0.0,),
    "leaky_relu": (0.0,),
    "elu": (0.0,),
    "selu": (0.0,),
    "hard_tanh": (-1.0, 1.0),
}

#: Odd, bounded activations whose length map contracts to q* = 0 when σb² = 0 and
#: σw² φ'(0)² ≤ 1 (the tanh family of Poole et al. 2016).
_ODD_SATURATING = frozenset({"tanh", "softsign", "hard_tanh", "erf"})


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise activation φ, with its derivatives at numpy points.

    Attributes:
        name: a readable name ("tanh", "leaky_relu:0.2", or the callable's name).
        fn: backend "exact": fn(x, order) -> [φ, φ', φ''][: order + 1] on numpy arrays;
            "torch": φ of a torch tensor; "numpy": φ of a numpy array.
        backend: "exact" (closed form), "torch" (derivatives by autograd) or "numpy"
            (finite differences).
        slopes: (slope for x > 0, slope for x < 0) when φ is piecewise linear and
            positively homogeneous (relu, leaky_relu, linear), else None. Such φ have
            closed-form mean-field quantities: E[φ(√q z)²] = q (a² + b²) / 2.
        odd_saturating: φ is odd and bounded like tanh, so q* = 0 when σb² = 0 and
            σw² φ'(0)² ≤ 1.
        kinks: points where φ or φ' is not smooth (hard_tanh: ±1); the Gaussian integrals
            are split there, since quadrature converges slowly across a kink. Give them
            for a kinked callable with ``dataclasses.replace(resolve_activation(fn),
            kinks=(0.0,))``.

    """

    name: str
    fn: Callable[[Any], Any]
    backend: Literal["exact", "torch", "numpy"]
    slopes: tuple[float, float] | None = None
    odd_saturating: bool = False
    kinks: tuple[float, ...] = ()

    @property
    def homogeneous(self) -> bool:
        """True when φ(a x) = a φ(x) for every a > 0 (piecewise linear through 0)."""
        return self.slopes is not None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return φ(x) as a float64 array of x's shape."""
        return self.derivatives(x, order=0)[0]

    def derivatives(self, x: np.ndarray, order: int = 2) -> list[np.ndarray]:
        """Return [φ(x), φ'(x), φ''(x)][: order + 1] as float64 arrays of x's shape.

        Args:
            x: the points, any shape.
            order: the highest derivative wanted, 0, 1 or 2.

        """
        x = np.asarray(x, dtype=np.float64)
        if self.backend == "exact":
            return self.fn(x, order)
        if self.backend == "torch":
            return _torch_derivatives(self.fn, x, order)
        return _fd_derivatives(self.fn, x, order)

    def __repr__(self) -> str:
        return f"Activation({self.name!r}, backend={self.backend!r})"


def _torch_derivatives(fn: Callable, x: np.ndarray, order: int) -> list[np.ndarray]:
    """φ, φ', φ'' by autograd on a float64 tensor (φ elementwise, so grad of Σφ is φ')."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(order > 0)
    with torch.enable_grad():
        y = fn(xt)
        out = [y.detach().to(torch.float64).numpy().copy()]
        if order >= 1:
            (g,) = torch.autograd.grad(y.sum(), xt, create_graph=order >= 2, allow_unused=True)
            g = torch.zeros_like(xt) if g is None else g
            out.append(g.detach().to(torch.float64).numpy().copy())
            if order >= 2:
                h = None
                if g.requires_grad:
                    (h,) = torch.autograd.grad(g.sum(), xt, allow_unused=True)
                h = torch.zeros_like(xt) if h is None else h
                out.append(h.detach().to(torch.float64).numpy().copy())
    return out


def _fd_derivatives(fn: Callable, x: np.ndarray, order: int) -> list[np.ndarray]:
    """φ, φ', φ'' by central differences (steps ~ ε^(1/3) and ε^(1/4), scaled by 1 + |x|)."""

    def f(a: np.ndarray) -> np.ndarray:
        return np.asarray(fn(a), dtype=np.float64).reshape(a.shape)

    y = f(x)
    out = [y]
    scale = 1.0 + np.abs(x)
    if order >= 1:
        h1 = 6e-6 * scale
        out.append((f(x + h1) - f(x - h1)) / (2 * h1))
    if order >= 2:
        h2 = 1e-4 * scale
        out.append((f(x + h2) - 2 * y + f(x - h2)) / (h2 * h2))
    return out


def resolve_activation(activation: Any) -> Activation:
    """Turn a name, an :class:`Activation` or an elementwise callable into an Activation.

    Args:
        activation: one of :data:`KNOWN_ACTIVATIONS`, "leaky_relu:SLOPE" (e.g.
            "leaky_relu:0.2"), an Activation, an elementwise torch callable (torch function
            or nn.Module; derivatives by autograd) or an elementwise numpy callable
            (derivatives by finite differences).

    Returns:
        The Activation.

    Raises:
        GradwatchValueError: unknown name, bad slope, or a callable that is not elementwise.
        GradwatchTypeError: neither a string nor a callable.

    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        return _named(activation.strip().lower())
    if callable(activation):
        return _from_callable(activation)
    raise GradwatchTypeError(
        f"activation must be a name or a callable, got {type(activation).__name__}; "
        f"pass one of {', '.join(KNOWN_ACTIVATIONS)} or an elementwise function such as torch.tanh"
    )


@functools.cache
def _named(name: str) -> Activation:
    base, sep, arg = name.partition(":")
    if base == "leaky_relu" and sep:
        try:
            slope = float(arg)
        except ValueError:
            slope = math.nan
        if not math.isfinite(slope):
            raise GradwatchValueError(
                f"activation {name!r} has a bad slope {arg!r}; write it as a finite number, "
                "e.g. 'leaky_relu:0.2'"
            )
        return Activation(
            name=f"leaky_relu:{slope:g}",
            fn=piecewise_linear(slope),
            backend="exact",
            slopes=(1.0, slope),
            kinks=(0.0,),
        )
    if sep or base not in NAMED:
        raise GradwatchValueError(
            f"activation {name!r} is not a known name; use one of "
            f"{', '.join(KNOWN_ACTIVATIONS)} (or 'leaky_relu:SLOPE'), or pass an elementwise "
            "callable"
        )
    slopes = {"relu": (1.0, 0.0), "leaky_relu": (1.0, DEFAULT_LEAKY_SLOPE), "linear": (1.0, 1.0)}
    return Activation(
        name=base,
        fn=NAMED[base],
        backend="exact",
        slopes=slopes.get(base),
        odd_saturating=base in _ODD_SATURATING,
        kinks=_KINKS.get(base, ()),
    )


def _from_callable(fn: Callable) -> Activation:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if isinstance(fn, nn.Module):
        # A float64 copy, so that modules with parameters (PReLU) accept float64 input.
        fn = copy.deepcopy(fn).double().eval()
    probe = np.linspace(-3.0, 3.0, 7)
    try:
        xt = torch.from_numpy(probe.copy()).requires_grad_(True)
        with torch.enable_grad():
            y = fn(xt)
        torch_ok = isinstance(y, torch.Tensor) and tuple(y.shape) == probe.shape
        differentiable = torch_ok and y.requires_grad
    except Exception:  # any failure means: not a torch function
        torch_ok = differentiable = False
    if differentiable:
        return _check_elementwise(Activation(name=name, fn=fn, backend="torch"), probe)
    if torch_ok:
        # A torch function autograd cannot see through: finite differences on its values.
        def as_numpy(a: np.ndarray, _fn: Callable = fn) -> np.ndarray:
            return _fn(torch.from_numpy(np.ascontiguousarray(a))).detach().double().numpy()

        return _check_elementwise(Activation(name=name, fn=as_numpy, backend="numpy"), probe)
    try:
        y_np = np.asarray(fn(probe.copy()), dtype=np.float64)
    except Exception as exc:  # report any failure as a bad activation
        raise GradwatchValueError(
            f"activation {name!r} failed on both a torch tensor and a numpy array ({exc}); "
            "pass an elementwise function of one tensor or array"
        ) from exc
    if y_np.shape != probe.shape:
        raise GradwatchValueError(
            f"activation {name!r} is not elementwise: an input of shape {probe.shape} gave "
            f"shape {y_np.shape}; pass a function applied to each element on its own"
        )
    return _check_elementwise(Activation(name=name, fn=fn, backend="numpy"), probe)


def _check_elementwise(act: Activation, probe: np.ndarray) -> Activation:
    """Raise unless φ of a slice equals the slice of φ and the values are finite."""
    try:
        whole = act(probe)
        part = act(probe[:3])
    except Exception as exc:  # any failure on a smaller input means: not elementwise
        raise GradwatchValueError(
            f"activation {act.name!r} failed on a 3-element input ({exc}); pass an "
            "elementwise function"
        ) from exc
    if not np.all(np.isfinite(whole)):
        raise GradwatchValueError(
            f"activation {act.name!r} returned non-finite values on [-3, 3]; pass a function "
            "that is finite on the real line"
        )
    if part.shape != (3,) or not np.allclose(part, whole[:3], rtol=1e-6, atol=1e-9):
        raise GradwatchValueError(
            f"activation {act.name!r} is not elementwise (its value at a point depends on "
            "the other points); pass a function applied to each element on its own"
        )
    return act


#: Parameter-free elementwise activation modules taken as callables (autograd derivatives).
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.CELU,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
)


def activation_from_module(module: nn.Module) -> Activation | None:
    """Return the Activation an activation module applies, or None for other modules.

    Known modules map to names (nn.Tanh -> "tanh", nn.LeakyReLU(0.2) -> "leaky_relu:0.2",
    nn.Identity -> "linear", ...); variants with other constants (nn.ELU(alpha=2),
    nn.GELU("tanh"), nn.ReLU6) and other elementwise modules (nn.Softplus, nn.Mish, ...)
    are used as callables.
    """
    if not isinstance(module, nn.Module):
        raise GradwatchTypeError(
            f"module must be a torch.nn.Module (e.g. nn.Tanh()), got {type(module).__name__}; "
            "for a name use resolve_activation"
        )
    simple: dict[type[nn.Module], str] = {
        nn.Identity: "linear",
        nn.Tanh: "tanh",
        nn.ReLU: "relu",
        nn.Sigmoid: "sigmoid",
        nn.SELU: "selu",
        nn.Softsign: "softsign",
        nn.SiLU: "silu",
    }
    name = simple.get(type(module))
    if name is not None:
        return resolve_activation(name)
    if isinstance(module, nn.LeakyReLU):
        return resolve_activation(f"leaky_relu:{module.negative_slope!r}")
    if isinstance(module, nn.PReLU):  # one slope per channel: the mean slope
        return resolve_activation(f"leaky_relu:{float(module.weight.detach().mean())!r}")
    if isinstance(module, nn.RReLU):
        # Its slope is random in training; the mean-field slope is the average one.
        return resolve_activation(f"leaky_relu:{(module.lower + module.upper) / 2!r}")
    if isinstance(module, nn.GELU):
        return resolve_activation("gelu" if module.approximate == "none" else module)
    if isinstance(module, nn.ELU) and module.alpha == 1.0:
        return resolve_activation("elu")
    if type(module) is nn.Hardtanh and module.min_val == -1 and module.max_val == 1:
        return resolve_activation("hard_tanh")
    # Subclasses of the simple ones may change the function: use them as callables.
    simple_types = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.SELU, nn.Softsign, nn.SiLU)
    if isinstance(module, _ELEMENTWISE_MODULES + simple_types + (nn.ELU, nn.Hardtanh)):
        return dataclasses.replace(resolve_activation(module), kinks=_module_kinks(module))
    return None


def _module_kinks(module: nn.Module) -> tuple[float, ...]:
    """Where an activation module's function has kinks, read from its constants."""
    if isinstance(module, nn.ELU | nn.CELU | nn.ReLU | nn.SELU):
        return (0.0,)
    if isinstance(module, nn.Hardtanh):  # also nn.ReLU6
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, nn.Hardswish | nn.Hardsigmoid):
        return (-3.0, 3.0)
    if isinstance(module, nn.Softshrink | nn.Hardshrink):
        return (-float(module.lambd), float(module.lambd))
    if isinstance(module, nn.Threshold):
        return (float(module.threshold),)
    return ()
