"""What a model is made of, from torch.nn module types and the autograd graph, never class names.

:func:`describe` answers the questions the diagnosis and the remedies ask about a model:
does it normalise (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, LocalResponseNorm),
is it recurrent (nn.RNNBase, nn.RNNCellBase), does it attend (nn.MultiheadAttention, or a
softmax over a product of two data-dependent tensors in its graph), does it embed
(nn.Embedding), does it have shortcuts (residual additions ``x + f(x)``, dense
concatenations ``cat([x, f(x)])``), where its residual stream (the trunk) runs, how large its
residual branches start, and which loss it was given (cross-entropy, with the loss of a
uniform guess). The graph is read by :func:`gradwatch.graph.read_graph` (see there how a
shortcut is told from other additions). Without an output only registered block types are
seen (:func:`register_residual_type`), and ``residual`` is None (unknown).

Users register their own types with :func:`register_norm_type` and
:func:`register_residual_type`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from gradwatch.errors import GradwatchTypeError
from gradwatch.graph import GraphFacts, read_graph

_NORM_TYPES: list[type[nn.Module]] = [
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
]
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES.append(nn.RMSNorm)
_RESIDUAL_TYPES: list[type[nn.Module]] = []
_RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)
_ATTENTION_TYPES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

#: Residual branches kept in the description (a 96-block GPT-2 has 192 joins).
MAX_BRANCHES = 512
#: A branch whose scale (see :func:`branch_scale`) is at most this starts near zero: the
#: block begins as the identity (zero-init of its last norm, Goyal et al. 2017; layer scale
#: 1e-6 to 1e-4, Touvron et al. 2021, "Going deeper with image transformers"; ConvNeXt).
SMALL_BRANCH = 0.1


def _check_type_arg(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise GradwatchTypeError(
            f"{name} must be a subclass of torch.nn.Module, got {cls!r}; pass the class "
            "itself, e.g. register_norm_type(MyNorm)"
        )


def register_norm_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Count modules of type ``cls`` (and subclasses) as normalization layers.

    Usable as a class decorator. Raises GradwatchTypeError when ``cls`` is not an nn.Module
    subclass.
    """
    _check_type_arg("cls", cls)
    if cls not in _NORM_TYPES:
        _NORM_TYPES.append(cls)
    return cls


def register_residual_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Count modules of type ``cls`` as residual blocks (``y = x + f(x)`` inside forward).

    Needed only where no autograd graph is at hand (``describe(model)`` without ``output``,
    ``theory.predict``). Usable as a class decorator.
    """
    _check_type_arg("cls", cls)
    if cls not in _RESIDUAL_TYPES:
        _RESIDUAL_TYPES.append(cls)
    return cls


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (torch.nn types or registered ones)."""
    return isinstance(module, tuple(_NORM_TYPES))


def is_recurrent(module: nn.Module) -> bool:
    """Whether ``module`` is a recurrent layer (nn.RNN, nn.LSTM, nn.GRU or a cell)."""
    return isinstance(module, _RECURRENT_TYPES)


def is_residual_block(module: nn.Module) -> bool:
    """Whether ``module`` is of a registered residual block type."""
    return bool(_RESIDUAL_TYPES) and isinstance(module, tuple(_RESIDUAL_TYPES))


def _name(name: str) -> str:
    return name or "(root)"


def describe(
    model: nn.Module, output: torch.Tensor | None = None, graph: GraphFacts | None = None
) -> dict[str, Any]:
    """Describe ``model``'s structure; JSON-safe.

    Args:
        model: the network.
        output: optional tensor produced by ``model`` (e.g. the loss) whose autograd graph is
            read for shortcuts, attention and the loss.
        graph: the :func:`~gradwatch.graph.read_graph` of ``output`` when the caller has
            already read it (``gw.check`` hooks the joins it found); read here otherwise.

    Returns:
        a dict with ``norm_layers``, ``recurrent_layers`` (each with ``type`` and, for
        nn.RNN, ``nonlinearity``), ``attention_layers``, ``embedding_layers`` (qualified
        module names), ``has_norm``, ``recurrent``, ``attention`` (bool), ``residual``
        (True/False from the graph, True from a registered block type, None when unknown),
        ``residual_joins`` (number of residual additions found), ``residual_branches``
        (for each join, input side first, the layers on the block path in registration
        order, a projection shortcut's layers left out; at most :data:`MAX_BRANCHES`
        joins), ``branch_outputs`` (for each join, the branch layer nearest it in the graph,
        whose output the branch adds to the stream), ``branch_scales`` (for each join,
        :func:`branch_scale` of that layer, None where it does not apply), ``dense_joins``
        (concatenations of ``x`` with ``f(x)``), ``shortcuts`` (residual or dense joins
        found), ``loss`` (cross-entropy's classes and chance loss, see
        :class:`~gradwatch.graph.GraphFacts`; None otherwise), ``gate_layers`` (layers
        whose output a gate's sigmoid reads, from the graph), ``lstm_forget_bias`` (mean
        forget-gate bias of each nn.LSTM), ``init_scale`` (:func:`init_scale`),
        ``reused_layers`` (layers whose parameters feed more than one operation, with the
        most operations one of them feeds, from the graph: a cell applied at every step of
        a sequence is read once per step), ``parametrized_layers`` (each parametrized
        module, ``torch.nn.utils.parametrize``: the tensors its parametrizations compute,
        e.g. ``{"0": ["weight"]}`` under spectral norm) and ``from_graph``.

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, or ``output`` is not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; pass the network"
        )
    if output is not None and not isinstance(output, torch.Tensor):
        raise GradwatchTypeError(
            f"output must be a torch.Tensor produced by the model (e.g. the loss) or None, got "
            f"{type(output).__name__}"
        )
    norm, recurrent, attention, embedding, blocks = [], {}, [], [], []
    forget: dict[str, float] = {}
    parametrized: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            parametrized[_name(name)] = sorted(m.parametrizations.keys())
        if is_norm(m):
            norm.append(_name(name))
        if is_recurrent(m):
            info: dict[str, Any] = {"type": type(m).__name__}
            if isinstance(m, nn.RNN):
                info["nonlinearity"] = m.nonlinearity
            recurrent[_name(name)] = info
            if isinstance(m, nn.LSTM) and m.hidden_size > 0:
                forget[_name(name)] = _lstm_forget_bias(m)
        if isinstance(m, _ATTENTION_TYPES):
            attention.append(_name(name))
        if isinstance(m, nn.Embedding | nn.EmbeddingBag):
            embedding.append(_name(name))
        if is_residual_block(m):
            blocks.append(_name(name))
    out: dict[str, Any] = {
        "norm_layers": norm,
        "has_norm": bool(norm),
        "recurrent_layers": recurrent,
        "recurrent": bool(recurrent),
        "attention_layers": attention,
        "attention": bool(attention),
        "embedding_layers": embedding,
        "residual_block_modules": blocks,
        "residual": True if blocks else None,
        "residual_joins": 0,
        "residual_branches": [],
        "branch_outputs": [],
        "branch_scales": [],
        "dense_joins": 0,
        "shortcuts": True if blocks else None,
        "loss": None,
        "lstm_forget_bias": forget,
        "gate_layers": [],
        "reused_layers": {},
        "init_scale": init_scale(model),
        "parametrized_layers": parametrized,
        "from_graph": False,
    }
    if output is not None and output.grad_fn is not None:
        facts = graph if graph is not None else read_graph(model, output)
        residual = facts.residual
        modules = dict(model.named_modules())
        out["from_graph"] = True
        out["residual_joins"] = len(residual)
        out["residual_branches"] = [j.branch for j in residual[:MAX_BRANCHES]]
        out["branch_outputs"] = [j.nearest for j in residual[:MAX_BRANCHES]]
        out["branch_scales"] = [
            branch_scale(modules.get("" if j.nearest == "(root)" else j.nearest or "-"))
            for j in residual[:MAX_BRANCHES]
        ]
        out["dense_joins"] = len(facts.dense)
        out["residual"] = bool(residual) or bool(blocks)
        out["shortcuts"] = bool(facts.joins) or bool(blocks)
        out["attention"] = out["attention"] or facts.attention
        out["loss"] = facts.loss
        out["gate_layers"] = list(facts.gates)
        out["reused_layers"] = dict(facts.reads)
    return out


def branch_scale(module: nn.Module | None) -> float | None:
    """How large a residual branch starts, read from the layer that adds it to the stream.

    A norm's affine weight (γ; 0 when zero-initialised, Goyal et al. 2017), or the only
    parameter of a layer that owns one vector (a layer-scale γ, Touvron et al. 2021): the
    root mean square of its entries. None for any other layer (a convolution, a linear
    layer), whose output scale is not one number.
    """
    if module is None:
        return None
    own = list(module.parameters(recurse=False))
    if is_norm(module):
        w = getattr(module, "weight", None)
        return _rms(w) if isinstance(w, torch.Tensor) else 1.0
    if len(own) == 1 and sum(n > 1 for n in own[0].shape) <= 1:
        return _rms(own[0])
    return None


def init_scale(model: nn.Module) -> dict[str, float] | None:
    """The scale the Linear/Conv weights were drawn at: median ``fan·E[W²]``, fan in and out.

    2 (fan in) is He's scale for ReLU (He et al. 2015), 2 (fan out) the ResNet reference
    implementation's, 1 LeCun's or Xavier's for a square layer, 1/3 PyTorch's default
    (U[-1/√fan_in, 1/√fan_in]). None when the model has no such layer with non-zero weights.
    """
    fan_in, fan_out = [], []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if not isinstance(m, nn.Linear | nn.modules.conv._ConvNd) or not isinstance(
            w, torch.Tensor
        ) or w.dim() < 2 or isinstance(w, nn.parameter.UninitializedParameter):
            continue
        second = float(w.detach().double().pow(2).mean())
        if second <= 0:
            continue
        n_in, n_out = nn.init._calculate_fan_in_and_fan_out(w)
        fan_in.append(n_in * second)
        fan_out.append(n_out * second)
    if not fan_in:
        return None
    return {
        "fan_in": sorted(fan_in)[len(fan_in) // 2],
        "fan_out": sorted(fan_out)[len(fan_out) // 2],
    }


#: ``fan·E[W²]`` of weights drawn at He's scale (He et al. 2015) and Xavier's or LeCun's.
HE_SCALE, XAVIER_SCALE = 2.0, 1.0
#: How far a measured :func:`init_scale` may be from a scheme's and still count as it.
SCALE_TOLERANCE = 0.25


def drawn_at(init: dict[str, float] | None, scale: float) -> bool:
    """Whether an :func:`init_scale` (fan in or fan out) is ``scale`` within the tolerance."""
    for key in ("fan_in", "fan_out"):
        v = (init or {}).get(key)
        if isinstance(v, int | float) and abs(v / scale - 1) <= SCALE_TOLERANCE:
            return True
    return False


def _rms(t: torch.Tensor) -> float:
    t = t.detach().double()
    return float(t.pow(2).mean().sqrt()) if t.numel() else 0.0


def _lstm_forget_bias(m: nn.LSTM) -> float:
    """Mean of b_ih + b_hh over the forget gate (rows H:2H; PyTorch's gate order i, f, g, o)."""
    h = m.hidden_size
    vals = []
    for layer in range(m.num_layers):
        total = 0.0
        for kind in ("ih", "hh"):
            b = getattr(m, f"bias_{kind}_l{layer}", None)
            if b is not None:
                total = total + b.detach()[h : 2 * h].double()
        if isinstance(total, torch.Tensor):
            vals.append(float(total.mean()))
    return sum(vals) / len(vals) if vals else 0.0
