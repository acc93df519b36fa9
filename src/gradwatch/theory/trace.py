"""Record one forward pass as the list of operations it runs, for the mean-field interpreter.

:func:`record` runs ``model(*inputs)`` once under a ``TorchDispatchMode``, which sees every
ATen operation below autograd (``aten.addmm``, ``aten.native_layer_norm``, ``aten.gelu``,
the fused attention kernels, ...) with all its arguments: tensors, and the Python numbers and
masks that the autograd graph does not keep. Module forward hooks note which tensor each
layer (a module that owns parameters) returned. Nothing about the model is read from class
names: the structure is the graph of operations, as autograd records it, plus the module
types of :mod:`gradwatch.layers`.

A tensor changed in place (``x.add_(y)``, a dropout mask filled by ``bernoulli_``) is copied
before the change, and the earlier operations that read it are pointed at the copy, so every
operation keeps the values it saw.

The model is left as it was: each module's train/eval mode and every buffer (BatchNorm
running statistics) are restored, and the pass runs under a forked random number generator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradwatch.layers import find_layers


@dataclass
class Op:
    """One operation of the forward pass.

    Attributes:
        func: the ATen operator (``torch._ops.OpOverload``).
        args, kwargs: its arguments as it received them (tensors included).
        out: what it returned (a tensor, or a tuple/list of them).
    """

    func: Any
    args: tuple
    kwargs: dict
    out: Any

    @property
    def name(self) -> str:
        """The operator's name without the ``aten::`` namespace, e.g. ``addmm``."""
        return schema_info(self.func)[0]


_SCHEMAS: dict[Any, tuple[str, tuple[int, ...], tuple[str, ...]]] = {}


def schema_info(func: Any) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """(name, positions of the arguments it writes in place, argument names) of an operator.

    Reading ``func._schema`` builds a new object each time (about a millisecond on a busy
    machine), so the answer is kept per operator.
    """
    info = _SCHEMAS.get(func)
    if info is None:
        schema = func._schema
        written = tuple(
            i
            for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
        info = (schema.name.split("::")[-1], written, tuple(a.name for a in schema.arguments))
        _SCHEMAS[func] = info
    return info


@dataclass
class Trace:
    """A recorded forward pass.

    Attributes:
        ops: the operations, in the order they ran.
        inputs: the tensors passed to the model.
        output: what the model returned.
        params: id of each parameter tensor -> its qualified name.
        layer_outputs: (layer name, module type name, output tensor, number of ops recorded
            when the layer returned), one per call of each layer, in call order.
        layer_order: the layers (modules owning parameters) in registration order.
    """

    ops: list[Op]
    inputs: tuple[torch.Tensor, ...]
    output: Any
    params: dict[int, str]
    layer_outputs: list[tuple[str, str, Any, int]] = field(default_factory=list)
    layer_order: list[str] = field(default_factory=list)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _replace(obj: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if obj is old:
        return new
    if isinstance(obj, list):
        return [_replace(o, old, new) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_replace(o, old, new) for o in obj)
    if isinstance(obj, dict):
        return {k: _replace(v, old, new) for k, v in obj.items()}
    return obj


class _Recorder(TorchDispatchMode):
    """Append every operation to ``ops``; copy tensors before an in-place change."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self._readers: dict[int, list[int]] = defaultdict(list)  # id(tensor) -> op indices
        self._keep: list[Any] = []  # strong references: no id is reused during the pass
        #: (layer name, module type name, output, ops recorded when the layer returned)
        self.layer_outputs: list[tuple[str, str, Any, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for pos in schema_info(func)[1]:
            if pos < len(args) and isinstance(args[pos], torch.Tensor):
                copies.append((args[pos], self._snapshot(args[pos])))
        out = func(*args, **kwargs)
        seen_args, seen_kwargs = tuple(args), dict(kwargs)
        for t, copy in copies:  # the operation read the values from before its change
            seen_args = _replace(seen_args, t, copy)
            seen_kwargs = _replace(seen_kwargs, t, copy)
        index = len(self.ops)
        self.ops.append(Op(func, seen_args, seen_kwargs, out))
        for t in _tensors((seen_args, seen_kwargs, out)):
            self._readers[id(t)].append(index)
        self._keep.append((seen_args, seen_kwargs, out))
        return out

    def _snapshot(self, t: torch.Tensor) -> torch.Tensor:
        """Point the operations that saw ``t`` so far at a copy of its current value."""
        copy = t.detach().clone()
        self._keep.append(copy)
        for i in self._readers.pop(id(t), []):
            op = self.ops[i]
            op.args = _replace(op.args, t, copy)
            op.kwargs = _replace(op.kwargs, t, copy)
            op.out = _replace(op.out, t, copy)
            self._readers[id(copy)].append(i)
        self.layer_outputs = [
            (name, kind, _replace(out, t, copy), at) for name, kind, out, at in self.layer_outputs
        ]
        return copy


def record(model: nn.Module, inputs: tuple[torch.Tensor, ...], train_mode: bool = True) -> Trace:
    """Run ``model(*inputs)`` once and record its operations (see the module docstring).

    Args:
        model: the network.
        inputs: the tensors passed as ``model(*inputs)``.
        train_mode: run in train mode (batch statistics in BatchNorm, dropout on).

    Returns:
        the :class:`Trace`.
    """
    layers = find_layers(model)
    params = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rec = _Recorder()

    def hook(name: str, type_name: str):
        def fn(_module, _inp, out):
            rec.layer_outputs.append((name, type_name, out, len(rec.ops)))

        return fn

    handles = [ly.module.register_forward_hook(hook(ly.name, ly.type_name)) for ly in layers]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train(train_mode)
            with rec:
                output = model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return Trace(
        ops=rec.ops,
        inputs=tuple(inputs),
        output=output,
        params=params,
        layer_outputs=rec.layer_outputs,
        layer_order=[ly.name for ly in layers],
    )
