"""The interface of a source of statistics: a *tap*.

A tap is one class per source (parameter gradients, the back-propagated signal, activations,
the optimizer's update, ...). It owns its hooks, its buffers and the statistics of the
registry (:mod:`gradwatch.stats.registry`) that it produces. The
:class:`~gradwatch.monitor.Monitor` keeps the lifecycle, the schedule and the sink, and calls
its taps in a loop:

- :meth:`Tap.install` once, when the Monitor is made (register hooks here, through a
  :class:`~gradwatch.monitor.hookkit.HookSet` so that they can be switched cheaply);
- :meth:`Tap.begin_step` at the start of every step, recorded or not, with the step's
  :class:`StepPlan`: reset per-step state, switch hooks on or off;
- the events of the step, each only to the taps that override it: the model's root forward
  (:meth:`Tap.on_forward`, :meth:`Tap.on_forward_done`), each layer's output
  (:meth:`Tap.on_layer_output`, while :attr:`Tap.layer_outputs` is set), the step's gradient
  pass (:meth:`Tap.on_gradients`, one :class:`~gradwatch.monitor.gradpass.GradPass` shared by
  all taps), the optimizer step (:meth:`Tap.before_optimizer_step`,
  :meth:`Tap.after_optimizer_step`), a step known to be non-finite (:meth:`Tap.on_nonfinite`)
  and the loss (:meth:`Tap.on_loss`);
- :meth:`Tap.collect` at the end of a recorded step: emit the step's blocks with
  :meth:`Record.emit` (kinds declared in the registry, which says how the host decodes them
  and how ranks combine them at a distributed flush), and, for statistics that need the
  ranks' values within the step, :meth:`Record.all_reduce` (one bucketed collective per
  recorded step for all taps);
- :meth:`Tap.on_flush` before every flush (under ``torch.distributed`` all ranks flush
  together), and :meth:`Tap.remove` when the Monitor closes.

What the taps share (the model, its layers and parameters, the pending step's plan, the loss
scale, warnings) is a :class:`~gradwatch.monitor.context.TapContext`. Nothing here reads a
device value on the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from gradwatch.stats import STATISTICS

F32 = torch.float32


class StepPlan:
    """What the schedule asks of one step: recorded or not, in detail or not, and what is due.

    Attributes:
        step: the step's index.
        recorded: whether the step is recorded at all.
        detail: whether it is a detail step (every ``detail_every``-th recorded step).
        persistent: hooks must stay registered (the model runs under ``torch.compile``).
        wanted: the statistics the user asked for.
        requests: what taps ask of each other for this step (e.g. ``"grad_max"``: the
            gradient pass also takes max |g|); filled in :meth:`Tap.begin_step`.
    """

    __slots__ = ("detail", "persistent", "recorded", "requests", "step", "wanted")

    def __init__(self, step: int, recorded: bool, detail: bool, persistent: bool,
                 wanted: frozenset[str]):
        self.step = step
        self.recorded = recorded
        self.detail = detail
        self.persistent = persistent
        self.wanted = wanted
        self.requests: set[str] = set()

    def due(self, stat: str) -> bool:
        """Whether ``stat`` is recorded at this step (asked for, and its tier's turn)."""
        return (
            self.recorded
            and stat in self.wanted
            and (self.detail or STATISTICS[stat].tier != "detail")
        )

    def any_due(self, stats: Iterable[str]) -> bool:
        """Whether any of ``stats`` is recorded at this step."""
        return any(self.due(s) for s in stats)

    def tiered(self, stats: Iterable[str]) -> bool:
        """Whether any of ``stats`` is asked for and on the detail tier."""
        return any(s in self.wanted and STATISTICS[s].tier == "detail" for s in stats)


class Record:
    """One recorded step, as :meth:`Tap.collect` sees it."""

    __slots__ = ("_bucket", "_ctx", "detail", "skipped", "step")

    def __init__(self, ctx: Any, step: int, detail: bool, skipped: bool, bucket: Any):
        self._ctx = ctx
        self._bucket = bucket
        self.step = step
        self.detail = detail
        self.skipped = skipped

    def emit(self, kind: str, key: Any, tensor: torch.Tensor) -> None:
        """Add a block of kind ``kind`` (a registry block kind) to the step.

        ``tensor`` is the on-device reduction (any shape, float; flattened to float32 at the
        flush); ``key`` is hashable and tells the kind's decoder how to read it.
        """
        self._ctx.emit(self.step, kind, key, tensor)

    def all_reduce(self, tensor: torch.Tensor, op: Any = "sum", group: Any = None):
        """``tensor`` reduced over the ranks of ``group``: emit what this returns.

        ``op``: ``"sum"``, ``"max"`` or ``"min"`` for every entry, or segments of the
        flattened tensor, ``(("sum", n), ("max", n))``. Returns a float32 tensor of the same
        shape that holds the result once every tap has collected (emit it as it is: a
        tensor computed from it now would read it before it is filled). The requests of all
        taps in a step share one collective per process group
        (:class:`~gradwatch.monitor.bucket.StepBucket`); a step that requests nothing makes
        none. Without ``torch.distributed`` it returns ``tensor``. Every rank must make the
        same requests in the same order.
        """
        return self._bucket.add(tensor, op, group)


class Tap:
    """Base class of a source of statistics (see the module docstring for the protocol).

    Subclasses set :attr:`name` and :attr:`sources`, and override what they need; every
    method here does nothing. A tap is made for every Monitor; :attr:`needed` says whether
    the user asked for any statistic it produces.
    """

    #: Unique short name; other taps find this one with ``ctx.tap(name)``.
    name: ClassVar[str] = ""
    #: Registry sources (``Statistic.source``) this tap produces.
    sources: ClassVar[tuple[str, ...]] = ()
    #: Set in :meth:`begin_step`: call :meth:`on_layer_output` for each layer at this step.
    layer_outputs: bool = False
    #: Set in :meth:`begin_step` (optional): a callable ``fn(li, out)`` the per-layer hook
    #: calls instead of :meth:`on_layer_output` at this step (a compiled function: no Python
    #: frame per layer); None: :meth:`on_layer_output`.
    layer_output_fn: Any = None
    #: Set in :meth:`begin_step`: this step needs ``ctx.tracker.last_layer`` kept current.
    track_layers: bool = False
    #: Whether the Monitor calls this tap at all (decided once, after every tap's
    #: :meth:`install`): a built-in tap whose statistics nobody asked for sets it False in
    #: :meth:`install`, and costs nothing per step; a tap that relies on another one sets
    #: that one's ``active`` back to True in its own :meth:`install`.
    active: bool = True

    def __init__(self, ctx: Any):
        self.ctx = ctx  # the Monitor's TapContext
        #: Whether any statistic this tap produces was asked for.
        self.needed = any(s in ctx.sources for s in self.sources)

    # -- lifecycle ----------------------------------------------------------------------
    def install(self) -> None:
        """Register hooks (once, when the Monitor is made)."""

    def begin_step(self, plan: StepPlan) -> None:
        """Start the pending step (every step): reset per-step state, switch hooks."""

    def collect(self, rec: Record) -> None:
        """End of a recorded step: emit its blocks with ``rec.emit``."""

    def on_flush(self) -> None:
        """Before each flush (all ranks together under torch.distributed)."""

    def remove(self) -> None:
        """Remove every hook and drop buffers (the Monitor is closing)."""

    # -- events ---------------------------------------------------------------------------
    def on_forward(self, args: Any, kwargs: Any) -> tuple | None:
        """The model's forward pass begins (any call of the root module, outside compile).

        May return new positional arguments for the model (the same values, e.g. an input
        made to require grad so that its gradient can be hooked); None keeps them.
        """

    def on_forward_done(self, args: Any, out: Any) -> None:
        """The model's forward pass returned ``out``."""

    def on_layer_output(self, li: int, out: Any) -> None:
        """Layer ``li`` returned ``out`` (while :attr:`layer_outputs` is set)."""

    def on_gradients(self, gp: Any) -> None:
        """The step's gradients are complete (:class:`~gradwatch.monitor.gradpass.GradPass`)."""

    def before_optimizer_step(self) -> None:
        """A recorded step's optimizer step is about to run (after the gradient pass)."""

    def after_optimizer_step(self) -> None:
        """A recorded step's optimizer step ran (not called when GradScaler skipped it)."""

    def on_nonfinite(self) -> None:
        """The pending step is known, without a host sync, to hold NaN/Inf (once a step)."""

    def on_loss(self, value: torch.Tensor, step: int | None) -> None:
        """The loss of the pending step (``step`` None) or of the closed step ``step``."""


def overrides(tap: Tap, method: str) -> bool:
    """Whether ``tap``'s class overrides ``Tap.<method>`` (the Monitor calls only those)."""
    return getattr(type(tap), method) is not getattr(Tap, method)


#: The tap classes every Monitor makes, in order (filled by :func:`register_tap`).
TAPS: list[type[Tap]] = []


def register_tap(cls: type[Tap]) -> type[Tap]:
    """Class decorator: add a tap class to every Monitor made from now on."""
    if not cls.name or any(t.name == cls.name for t in TAPS):
        raise AssertionError(f"tap {cls.__name__}: name {cls.name!r} is empty or taken")
    TAPS.append(cls)
    return cls
