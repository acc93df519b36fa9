"""``gw.check``: one forward/backward pass on a batch, the same statistics and findings as a run.

``check(model, inputs)`` watches the model with the same :class:`~gradwatch.monitor.Monitor`
that records training runs (in memory, every statistic at this one step), runs one pass and
applies the same rules (handed down by :func:`use_rules`): "will this network's gradients
vanish or explode?" before any training. The model is left as it was found (gradients,
modes, buffers, the global RNG state). ``meta`` holds each layer's output shape and the
structure (:func:`gradwatch.structure.describe` on the loss's autograd graph).

The default loss, when no targets are given, is ``0.5 * sum(output**2) / batch``: its gradient
with respect to the output is the output itself (divided by the batch size), so the pass
probes the network's own signal, with no labels needed. With targets it is cross-entropy for
integer class labels of an (N, C) output, mean squared error otherwise.

For a model with a time axis the checkup also measures ``‖∂L/∂x_t‖`` for every time step t
where the signal enters (the model's input: a floating ``(N, T, F)`` sequence, or tokens at
their embedding's output; the input of each nn.RNN/LSTM/GRU), whatever cell carries it
(Pascanu et al. 2013). It measures ``‖∂L/∂h‖`` at each residual join of the loss's graph, the
residual stream (``meta["checkup"]["trunk"]``), and the RMS of each layer's input and output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch import handoff, probes
from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError
from gradwatch.findings import Finding
from gradwatch.graph import read_graph
from gradwatch.jsonable import json_cell, json_number, jsonable
from gradwatch.layers import Layer, check_hookable, find_layers
from gradwatch.monitor import watch
from gradwatch.monitor.lifecycle import standing_aside
from gradwatch.probes import INPUT, TEMPORAL_COLUMNS, ForwardProbe, TemporalProbe, TrunkProbe
from gradwatch.stats.precision import PRECISION_STATS
from gradwatch.store.reader import Run
from gradwatch.structure import describe
from gradwatch.theory.opinion import second_opinion
from gradwatch.verdicts import verdict

#: A diagnosis: ``rules(run, is_checkup) -> findings``. ``check`` sits below
#: :mod:`gradwatch.diagnose` in the package's layers, so the rules are handed down to it: as
#: the ``rules`` argument, or once for all by :func:`use_rules` (which ``gradwatch.diagnose``
#: calls when it is imported, as ``import gradwatch`` does).
Rules = Callable[[Run, bool], list[Finding]]
_DEFAULT_RULES: list[Rules] = []


def use_rules(rules: Rules) -> None:
    """Make ``rules`` the diagnosis every :func:`check` without ``rules=`` applies.

    Args:
        rules: ``rules(run, is_checkup) -> list[Finding]``, e.g.
            ``gradwatch.diagnose.diagnose_run``.

    Raises:
        GradwatchTypeError: ``rules`` is not callable.
    """
    if not callable(rules):
        raise GradwatchTypeError(
            f"rules must be callable as rules(run, is_checkup), got {type(rules).__name__}"
        )
    _DEFAULT_RULES[:] = [rules]

#: Statistic columns of :attr:`Checkup.table`, in order.
STAT_COLUMNS = (
    "grad_norm",
    "grad_rms",
    "grad_max_abs",
    "nonfinite",
    "backprop_norm",
    "weight_norm",
    "act_mean",
    "act_std",
    "saturated_frac",
    "dead_frac",
)


@dataclass
class Checkup:
    """The result of :func:`check`.

    Attributes:
        table: one row per layer, input side first: ``layer``, ``type``, every statistic of
            :data:`STAT_COLUMNS` (NaN where it does not apply; and precision statistics),
            ``backprop_ratio``, ``grad_ratio`` (over the output-side layer's).
        findings: what the diagnosis rules found.
        verdict: "healthy", "vanishing", "exploding", "nonfinite", "dead", "saturated" or
            "uncertain" (:mod:`gradwatch.verdicts`).
        run: the one-step in-memory :class:`~gradwatch.store.reader.Run` behind the table.
        loss: the loss of the pass (may be NaN or Inf).
        temporal: one row per (layer, t): ``grad_norm`` = ‖∂L/∂x_t‖ over the batch and
            features, ``ratio`` = that over its value at the last step, for the input of
            each recurrent layer and for the model's input (layer ``"(input)"``) when it has
            a time axis; empty when there is none.
    """

    table: pd.DataFrame
    findings: list[Finding]
    verdict: str
    run: Run
    loss: float
    temporal: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(TEMPORAL_COLUMNS))
    )

    def summary(self) -> str:
        """A plain-text report: verdict, findings, then a compact per-layer table."""
        head = f"Checkup: {self.verdict.upper()} (loss {self.loss:.4g}, {len(self.table)} layers)"
        lines = [head]
        if self.findings:
            lines.append("Findings:")
            lines += [f"  [{f.severity}] {f.kind}: {f.message}" for f in self.findings]
        else:
            lines.append("Findings: none")
        cols = [
            "layer",
            "type",
            "backprop_norm",
            "backprop_ratio",
            "grad_norm",
            "dead_frac",
            "saturated_frac",
        ]
        if fmt := self.run.meta.get("checkup", {}).get("precision"):
            cols += [f"grad_underflow_{fmt}", f"bp_underflow_{fmt}", f"grad_overflow_{fmt}"]
        tab = self.table[cols].copy()
        lines.append("Layers (input side first):")
        lines.append(tab.to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))
        if len(self.temporal):
            lines.append("Temporal gradient flow ‖∂L/∂x_t‖ / ‖∂L/∂x_T‖ (first, middle, last t):")
            for layer, grp in self.temporal.groupby("layer", sort=False):
                r = grp["ratio"].to_numpy()
                lines.append(
                    f"  {layer}: {r[0]:.3g}, {r[len(r) // 2]:.3g}, {r[-1]:.3g} over {len(r)} steps"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-clean content: verdict, loss, findings, table and temporal rows.

        Numbers follow :mod:`gradwatch.jsonable` (NaN and ±inf as "nan", "inf", "-inf"),
        except that NaN table entries (statistics that do not apply) become None.
        """
        return jsonable({
            "verdict": self.verdict,
            "loss": self.loss,
            "findings": [f.to_dict() for f in self.findings],
            "table": probes.json_records(self.table),
            "temporal": probes.json_records(self.temporal),
        })

    def __repr__(self) -> str:
        return (
            f"Checkup(verdict={self.verdict!r}, loss={self.loss:.4g}, {len(self.table)} layers, "
            f"{len(self.findings)} findings)"
        )


def check(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    *,
    train_mode: bool = True,
    rules: Rules | None = None,
    precision: Any = None, loss_scale: float | None = None,
    theory: bool = True,
) -> Checkup:
    """Check a model's gradient flow with one forward/backward pass on a batch.

    The model is left as it was: parameter ``.grad``, each module's train/eval mode and every
    buffer (BatchNorm running statistics) are restored, and the pass runs under a forked RNG.

    Args:
        model: the network.
        inputs: a batch (a tensor, or a tuple of tensors passed as ``model(*inputs)``). It is
            moved to the model's device when all parameters live on one device.
        targets: optional targets. Integer class labels with an (N, C, ...) output give
            cross-entropy; anything else mean squared error against the output.
        loss_fn: optional ``loss_fn(output, targets)`` (or ``loss_fn(output)`` without
            targets) returning a scalar. Default without targets:
            ``0.5 * sum(output**2) / N``, whose gradient with respect to the output is the
            output itself (over N), so the pass probes the network's own signal.
        train_mode: run the pass in train mode (batch statistics in BatchNorm, dropout on);
            False for eval mode.
        rules: the diagnosis, ``rules(run, is_checkup) -> list[Finding]``; by default the
            rules of :mod:`gradwatch.diagnose` (see :func:`use_rules`).
        precision: "fp16", "bf16", "e4m3" or "e5m2": what a cast flushes or overflows.
        loss_scale: the loss scale those are read at (None: 1); gradwatch.stats.precision.
        theory: add a "theory_mismatch" note (info) where mean-field theory disagrees
            (:func:`gradwatch.theory.opinion.second_opinion`).

    Returns:
        a :class:`Checkup` (``table``, ``findings``, ``verdict``, ``run``, ``loss``,
        ``temporal``).

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, ``inputs``/``targets`` are not
            tensors, ``loss_fn`` is not callable, or the model output is not a tensor.
        GradwatchValueError: ``model`` has no parameters (or none requires grad), ``inputs``
            do not fit the model (the message gives the shape expected where it can tell),
            ``targets`` do not fit the output, or ``loss_fn`` does not return a scalar.
    """
    layers = find_layers(model)  # validates model: nn.Module with parameters
    check_hookable(model)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise GradwatchValueError(
            "model has parameters on the meta device (shapes without values): no gradient can "
            "be measured; materialise them, e.g. model.to_empty(device='cpu') and an init"
        )
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise GradwatchValueError(
            "model has uninitialised (lazy) parameters; run one forward pass, e.g. "
            "model(inputs), to materialise them before checking it"
        )
    args = _as_args(inputs)
    if targets is not None and not isinstance(targets, torch.Tensor):
        raise GradwatchTypeError(
            f"targets must be a torch.Tensor or None, got {type(targets).__name__}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise GradwatchTypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(train_mode, bool):
        raise GradwatchTypeError(f"train_mode must be a bool, got {type(train_mode).__name__}")
    if not isinstance(theory, bool):
        raise GradwatchTypeError(f"theory must be a bool, got {type(theory).__name__}")
    if rules is None:
        rules = _DEFAULT_RULES[0] if _DEFAULT_RULES else handoff.check_rules()
    if rules is None:
        raise GradwatchValueError(
            "rules: no diagnosis rules are registered; import gradwatch (which registers "
            "gradwatch.diagnose's rules) or pass rules="
        )
    if not callable(rules):
        raise GradwatchTypeError(
            f"rules must be callable as rules(run, is_checkup), got {type(rules).__name__}"
        )
    device = _model_device(model)
    if device is not None:
        args = tuple(a.to(device) for a in args)
        targets = targets.to(device) if targets is not None else None

    state = probes.save_state(model)
    rng_devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        # a Monitor watching the model (a check inside a training step) does not see this pass
        with standing_aside(model), torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
            model.train(train_mode)
            for p in model.parameters():
                p.grad = None
            mon = watch(model, run_dir=None, detail_every=1, precision=precision,
                        loss_scale=loss_scale)
            probe = ForwardProbe(layers)
            temporal = TemporalProbe(model)
            trunk = None
            try:
                out = _forward(model, temporal.watch_input(args), layers)
                loss, loss_kind = _loss(out, targets, loss_fn)
                graph = read_graph(model, loss) if loss.requires_grad else None
                if graph is None or not graph.parametrised:
                    raise GradwatchValueError(
                        "model: the loss does not depend on any parameter that requires grad; "
                        "unfreeze the layers to check (requires_grad_(True))"
                    )
                structure = describe(model, loss, graph=graph)
                trunk = TrunkProbe([j.node for j in graph.residual])
                loss.backward()
                mon.step(loss)
            finally:
                mon.close()
                probe.remove()
                temporal.remove()
                if trunk is not None:
                    trunk.remove()
            run = mon.run
    finally:
        probes.restore_state(model, state)

    loss_value = float(loss.detach().float().cpu())
    temporal_frame = temporal.frame()
    run.meta["checkup"] = {
        "temporal": {
            str(layer): _flow_summary(grp, temporal.where.get(INPUT) if layer == INPUT else None)
            for layer, grp in temporal_frame.groupby("layer", sort=False)
        },
        "trunk": [
            {"after": j.nearest, "branch": j.branch, "grad_norm": json_cell(v), "shape": shp}
            for j, v, shp in zip(graph.residual, trunk.norms, trunk.shapes, strict=True)
        ] if trunk is not None else [],
        "rms_in": {k: json_cell(v) for k, v in probe.rms_in.items()},
        "rms_out": {k: json_cell(v) for k, v in probe.rms_out.items()},
        "batch_size": int(args[0].shape[0]) if args[0].dim() >= 1 else 1,
        "loss": json_number(loss_value),
        "loss_kind": loss_kind,
        "train_mode": train_mode,
        "nonfinite_origin": probe.origin(args),
        **{k: run.meta["settings"].get(k, d) for k, d in (("precision", None),
                                                           ("loss_scale", 1.0))},
    }
    run.meta["structure"] = structure
    info = run.meta.setdefault("layer_info", {})
    for name, shape in probe.shapes.items():
        info.setdefault(name, {}).setdefault("out_shape", shape)
    findings = list(rules(run, True))
    table = _table(run)
    if theory:  # a note where theory and measurement disagree, unseen by a watching Monitor
        state, readout = probes.save_state(model), "output" if loss_kind == "default" else "random"
        try:
            with standing_aside(model), torch.random.fork_rng(devices=rng_devices):
                findings = findings + second_opinion(model, args, table, readout, train_mode)
        finally:
            probes.restore_state(model, state)
    return Checkup(
        table=table,
        findings=findings,
        verdict=verdict(findings),
        run=run,
        loss=loss_value,
        temporal=temporal_frame,
    )


def _flow_summary(grp: pd.DataFrame, where: str | None) -> dict[str, Any]:
    """What the rules read of one measured flow through time.

    :func:`gradwatch.probes.flow_summary` (kept in ``meta["checkup"]["temporal"]``), and
    ``measured_at`` for the model input.
    """
    out = probes.flow_summary(grp["ratio"].to_numpy(dtype=np.float64))
    if where is not None:
        out["measured_at"] = where
    return out


# ---------------------------------------------------------------------------- validation
def _as_args(inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return _non_empty((inputs,))
    if isinstance(inputs, tuple | list) and inputs and all(torch.is_tensor(x) for x in inputs):
        return _non_empty(tuple(inputs))
    got = type(inputs).__name__
    if isinstance(inputs, tuple | list):
        kinds = ", ".join(type(x).__name__ for x in inputs)
        got = f"{got} of {kinds}" if inputs else f"empty {got}"
    raise GradwatchTypeError(
        f"inputs must be a torch.Tensor or a tuple of tensors (passed as model(*inputs)), got "
        f"{got}; convert with torch.as_tensor(...)"
    )


def _non_empty(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    for x in args:
        if x.device.type == "meta":
            raise GradwatchValueError(
                f"inputs are on the meta device (shape {tuple(x.shape)}, no values), so no "
                "gradient can be measured; pass a real batch, e.g. torch.randn(8, ...)"
            )
        if x.numel() == 0:
            raise GradwatchValueError(
                f"inputs has no elements (shape {tuple(x.shape)}); give a batch of at least "
                "one example"
            )
    return args


def _model_device(model: nn.Module) -> torch.device | None:
    devices = {p.device for p in model.parameters()}
    return devices.pop() if len(devices) == 1 else None


def _expected(layer: Layer, x: torch.Tensor) -> str | None:
    """What the first layer expects, when ``x`` visibly does not fit it."""
    m = layer.module
    shape = tuple(x.shape)
    if isinstance(m, nn.Linear) and (x.dim() == 0 or shape[-1] != m.in_features):
        return f"(..., {m.in_features})"
    if isinstance(m, nn.modules.conv._ConvNd):
        nd = len(m.kernel_size)
        spatial = ", ".join("HWD"[i] if nd > 1 else "L" for i in range(nd))
        if x.dim() not in (nd + 1, nd + 2) or shape[-nd - 1] != m.in_channels:
            return f"(N, {m.in_channels}, {spatial})"
    if isinstance(m, nn.RNNBase) and (x.dim() not in (2, 3) or shape[-1] != m.input_size):
        return f"({'N, T' if m.batch_first else 'T, N'}, {m.input_size})"
    if isinstance(m, nn.Embedding) and x.is_floating_point():
        return f"integer indices in [0, {m.num_embeddings})"
    return None


def _forward(model: nn.Module, args: tuple[torch.Tensor, ...], layers: list[Layer]) -> Any:
    try:
        return model(*args)
    except (RuntimeError, IndexError, ValueError) as exc:
        if isinstance(exc, GradwatchError):
            raise
        got = ", ".join(str(tuple(a.shape)) for a in args)
        exp = _expected(layers[0], args[0])
        hint = (
            f"the first layer '{layers[0].name}' ({layers[0].type_name}) expects {exp}, got {got}"
            if exp
            else f"got inputs of shape {got}"
        )
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "more than 1 value per channel" in msg:  # BatchNorm in train mode, one example
            hint += (" (normalization in train mode needs more than one example per batch: "
                     "give a batch of 2 or more, or check in eval mode, train_mode=False)")
        raise GradwatchValueError(
            f"inputs do not fit the model: {hint}; the forward pass failed with: {msg}"
        ) from exc
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise GradwatchTypeError(
            f"inputs do not match the model's forward() ({exc}); pass a tuple of tensors for a "
            "forward() with several arguments"
        ) from exc


def _output_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise GradwatchTypeError(
        f"the model returned {type(out).__name__}, not a tensor; pass loss_fn= to turn its "
        "output into a scalar loss"
    )


def _loss(out: Any, targets: torch.Tensor | None, loss_fn: Callable | None) -> tuple[Any, str]:
    """The scalar loss and which loss it is."""
    if loss_fn is not None:
        loss = loss_fn(out, targets) if targets is not None else loss_fn(out)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise GradwatchValueError(
                f"loss_fn must return a scalar tensor, got {what}; reduce it with .mean()"
            )
        return loss.reshape(()), "loss_fn"
    y = _output_tensor(out)
    if targets is None:
        n = y.shape[0] if y.dim() >= 1 and y.shape[0] > 0 else 1
        return 0.5 * y.pow(2).sum() / n, "default"
    integer = not (targets.is_floating_point() or targets.is_complex()) and (
        targets.dtype != torch.bool
    )
    if integer and y.dim() >= 2 and tuple(targets.shape) == (y.shape[0], *y.shape[2:]):
        try:
            return F.cross_entropy(y, targets.long()), "cross_entropy"
        except (RuntimeError, IndexError) as exc:
            raise GradwatchValueError(
                f"targets must be class labels in [0, {y.shape[1]}) for an output with "
                f"{y.shape[1]} classes ({str(exc).splitlines()[0][:200]})"
            ) from exc
    if tuple(targets.shape) != tuple(y.shape):
        raise GradwatchValueError(
            f"targets of shape {tuple(targets.shape)} do not fit the model output of shape "
            f"{tuple(y.shape)}: pass integer class labels of shape ({y.shape[0]},) for an "
            "(N, C) output, targets shaped like the output, or a loss_fn"
        )
    return F.mse_loss(y, targets.to(y.dtype)), "mse"


# ------------------------------------------------------------------------------- table
def _table(run: Run) -> pd.DataFrame:
    layers = run.layers
    info = run.meta.get("layer_info") or {}
    types = [str(info.get(ly, {}).get("type", "")) for ly in layers]
    table = pd.DataFrame({"layer": layers, "type": types})
    df = run.stats
    for stat in STAT_COLUMNS + tuple(s for s in PRECISION_STATS if s in set(df["stat"])):
        sel = df[(df["stat"] == stat) & (df["layer"] != "")]
        last = sel.drop_duplicates("layer", keep="last").set_index("layer")["value"]
        table[stat] = [float(last[ly]) if ly in last.index else np.nan for ly in layers]
    table["backprop_ratio"] = probes.over_output_side(table["backprop_norm"].to_numpy(dtype=float))
    table["grad_ratio"] = probes.over_output_side(table["grad_norm"].to_numpy(dtype=float))
    return table
