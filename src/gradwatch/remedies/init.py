"""``init_``: initialise a model by scheme name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.remedies._apply import InitRecord
from gradwatch.remedies._targets import check_model
from gradwatch.remedies.fixup import fixup_init_
from gradwatch.remedies.init_schemes import (
    he_init_,
    lecun_init_,
    orthogonal_init_,
    standard_init_,
    xavier_init_,
)
from gradwatch.remedies.lsuv import lsuv_init_

#: Scheme name → (function, whether it reads ``inputs``).
SCHEMES: dict[str, tuple[Callable[..., InitRecord], bool]] = {
    "he": (he_init_, True),
    "kaiming": (he_init_, True),
    "xavier": (xavier_init_, True),
    "glorot": (xavier_init_, True),
    "xavier_normal": (functools.partial(xavier_init_, distribution="normal"), True),
    "lecun": (lecun_init_, False),
    "standard": (standard_init_, False),
    "orthogonal": (orthogonal_init_, True),
    "lsuv": (lsuv_init_, True),
    "fixup": (fixup_init_, True),
}


def init_(model: nn.Module, scheme: str, inputs: Any = None, **options: Any) -> InitRecord:
    """Initialise ``model`` in place with the named scheme.

    =================  ===============================================  =================
    scheme             weights                                          function
    =================  ===============================================  =================
    "he", "kaiming"    N(0, gain²/fan_in), gain of the next activation  :func:`he_init_`
    "xavier", "glorot" U(±√(6/(n_in+n_out)))                            :func:`xavier_init_`
    "xavier_normal"    N(0, 2/(n_in+n_out))                             :func:`xavier_init_`
    "lecun"            N(0, 1/fan_in), for SELU                         :func:`lecun_init_`
    "standard"         U(±1/√fan_in), the classic failure               :func:`standard_init_`
    "orthogonal"       gain · Q, Q orthogonal                           :func:`orthogonal_init_`
    "lsuv"             orthogonal, then unit output variance per layer  :func:`lsuv_init_`
    "fixup"            He, scaled residual branches, zeroed ends        :func:`fixup_init_`
    =================  ===============================================  =================

    Args:
        model: the network, changed in place.
        scheme: one of the names above (case-insensitive).
        inputs: a batch for ``model(inputs)``: required by "lsuv"; for the others it lets
            the following activation of each layer be found by running the model.
            Ignored by "lecun" and "standard".
        **options: passed to the scheme's function (e.g. ``mode="fan_out"`` for "he").

    Returns:
        What was changed: layer name → {"scheme", "gain", "std", ...}.

    Raises:
        GradwatchValueError: an unknown scheme or a bad option value; the model is then
            unchanged.
        GradwatchTypeError: ``model`` is not an nn.Module, or an option the scheme does not
            take.

    References:
        See each scheme's function.

    """
    check_model(model)
    if not isinstance(scheme, str) or scheme.lower() not in SCHEMES:
        raise GradwatchValueError(f"scheme {scheme!r} is unknown; use one of {', '.join(SCHEMES)}")
    fn, reads_inputs = SCHEMES[scheme.lower()]
    args = (model, inputs) if reads_inputs else (model,)
    try:
        inspect.signature(fn).bind(*args, **options)
    except TypeError as err:
        raise GradwatchTypeError(
            f"options: scheme {scheme!r} does not take {sorted(options)} ({err}); "
            "see help(gradwatch.remedies.init_) for the function behind each scheme"
        ) from err
    return fn(*args, **options)
