"""The Monitor: hooks that record per-layer statistics while a model trains.

Lifecycle: :func:`watch` installs, once, every hook the requested statistics need (a forward
hook per layer for the back-propagated signal, a forward hook per activation module, optimizer
step hooks); :meth:`Monitor.close` removes them all, so the model is as it was.

THE HOT PATH is three places, all in this file: ``_on_layer_forward`` / ``_on_backprop`` (per
layer call), ``_on_act_forward`` (per activation call) and ``_record_step`` (once per recorded
step). None of them calls ``.item()`` or ``.cpu()`` on an accelerator or loops over parameters
where a fused ``torch._foreach_*`` call exists; each recorded step leaves a few small float32
tensors on the device, and every ``flush_every`` steps (or ``flush_secs`` seconds) they are
concatenated and handed to the background writer, which moves them to the host in one
transfer.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.errors import GradwatchTypeError, GradwatchValueError, RunDirectoryError
from gradwatch.layers import find_activations, find_layers
from gradwatch.schedule import make_schedule
from gradwatch.stats import ALL_STATS, DETAIL_STATS, SOURCES, norm32
from gradwatch.stats.activation import FAMILY_CODE, act_block
from gradwatch.stats.gradient import NormPlan, grad_block
from gradwatch.stats.update import update_block, weight_block
from gradwatch.store import lock as run_lock
from gradwatch.store.format import FINDINGS, FORMAT_VERSION, META, STATS_DIR, write_json_atomic
from gradwatch.store.reader import Run, tables_to_frame
from gradwatch.store.writer import Block, Layout, RunWriter

_LIVE: weakref.WeakSet[Monitor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # flush runs of a process that exits without closing them
    for mon in list(_LIVE):
        try:
            mon.close()
        except Exception:  # noqa: BLE001, S110 - never raise at exit
            pass


_PREVIOUS_SIGTERM: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM -> SystemExit, so ``with`` blocks and atexit flush the open runs."""
    raise SystemExit(128 + signum)


def _install_sigterm() -> None:
    """Flush on SIGTERM: only from the main thread and only if nobody else handles it."""
    global _PREVIOUS_SIGTERM
    if threading.current_thread() is not threading.main_thread() or _PREVIOUS_SIGTERM is not None:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _PREVIOUS_SIGTERM = signal.SIG_DFL
    except (ValueError, OSError):  # pragma: no cover - not in the main interpreter
        pass


def _restore_sigterm() -> None:
    global _PREVIOUS_SIGTERM
    if _PREVIOUS_SIGTERM is None or _LIVE:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM)
        _PREVIOUS_SIGTERM = None
    except (ValueError, OSError):  # pragma: no cover
        pass


def _tensors(out: Any) -> Iterable[torch.Tensor]:
    """The tensors in a module output (tensor, or nested tuple/list/dict of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


class Monitor:
    """Records per-layer gradient, activation and update statistics of a model.

    Create it with :func:`gradwatch.watch`. Use it as a context manager, or call
    :meth:`close` when training ends: that flushes everything and removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        every: int | str | Callable[[int], bool] = 1,
        activations: bool = True,
        *,
        detail_every: int = 10,
        stats: Iterable[str] | None = None,
        scaler: Any = None,
        flush_every: int = 1000,
        flush_secs: float = 5.0,
        overwrite: bool = False,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
        diagnose: bool = True,
        tensorboard: str | Path | None = None,
    ):
        # -- validate everything before touching the model or the disk ---------------------
        layers = find_layers(model)  # raises for non-modules and models without parameters
        self._schedule = make_schedule(every, "every")
        if isinstance(detail_every, bool) or not isinstance(detail_every, int):
            raise GradwatchTypeError(
                f"detail_every must be a positive int, got {type(detail_every).__name__}"
            )
        if detail_every < 1:
            raise GradwatchValueError(
                f"detail_every must be >= 1, got {detail_every}; use 1 to record every "
                "statistic at every recorded step"
            )
        for arg, val in (("flush_every", flush_every), ("flush_secs", flush_secs)):
            if isinstance(val, bool) or not isinstance(val, int | float) or val <= 0:
                raise GradwatchValueError(f"{arg} must be a positive number, got {val!r}")
        wanted = set(ALL_STATS if stats is None else stats)
        unknown = wanted - set(ALL_STATS)
        if unknown:
            raise GradwatchValueError(
                f"stats has unknown names {sorted(unknown)}; known: {', '.join(ALL_STATS)}"
            )
        if not activations:
            wanted -= set(SOURCES["act"])
        optimizers = self._check_optimizers(optimizer)
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise GradwatchTypeError(
                f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}"
            )
        if scaler is not None and not optimizers:
            raise GradwatchValueError(
                "scaler= needs optimizer=: pass the optimizer that scaler.step() steps"
            )

        self.model = model
        self.stats = tuple(s for s in ALL_STATS if s in wanted)
        self._need = {src for src, names in SOURCES.items() if wanted & set(names)}
        self._detail_stats = set(DETAIL_STATS) & wanted
        self.detail_every = detail_every
        self.every = every
        self.flush_every = int(flush_every)
        self.flush_secs = float(flush_secs)
        self._optimizers = optimizers
        self._scaler = scaler
        self.name = name

        # -- static layout: layers, unique parameters, which layer owns which ----------------
        self.layers = layers
        self._layer_names = [ly.name for ly in layers]
        params: list[nn.Parameter] = []
        index: dict[int, int] = {}
        layer_params: dict[int, list[int]] = {}
        for li, ly in enumerate(layers):
            ids = []
            for p in ly.module.parameters(recurse=False):
                if p.numel() == 0:
                    continue
                if id(p) not in index:
                    index[id(p)] = len(params)
                    params.append(p)
                ids.append(index[id(p)])
            layer_params[li] = ids
        self._params = params
        self._all_pids = tuple(range(len(params)))
        self._plan: NormPlan | None = None  # built lazily, once gradients exist
        self._layout = Layout(
            layer_names=self._layer_names,
            layer_params=layer_params,
            numel=np.array([p.numel() for p in params], dtype=np.int64),
        )
        self._acts_info = find_activations(model) if "act" in self._need else []

        # -- distributed: statistics combined across ranks at each flush, rank 0 writes --------
        from gradwatch.integrations import distributed as gw_dist

        self._dist = gw_dist.is_distributed(process_group) if distributed is None else distributed
        self._pg = process_group
        self.rank, self.world_size = (
            gw_dist.rank_and_world(process_group) if self._dist else (0, 1)
        )
        if self._dist:
            self.flush_secs = float("inf")  # ranks flush together, by step count only

        # -- run directory --------------------------------------------------------------------
        self.run_dir = Path(run_dir) if run_dir is not None and self.rank == 0 else None
        self._lock_path: Path | None = None
        if self.run_dir is not None:
            self._prepare_run_dir(overwrite)
        tb_writer = None
        if tensorboard is not None and self.rank == 0:
            from gradwatch.report.tensorboard import _summary_writer

            tb_writer = _summary_writer()(log_dir=str(tensorboard))
        self._writer = RunWriter(self.run_dir, self._layout, tb_writer)
        self._started = time.time()
        self._config = dict(config or {})
        self._diagnose_at_close = bool(diagnose)

        # -- per-step state -----------------------------------------------------------------
        self._step = 0  # index of the pending (not yet closed) step
        self._n_recorded = 0
        self._buffer: list[Block] = []
        self._last_flush = time.monotonic()
        self._bp_layers: list[int] = []
        self._bp_norms: list[torch.Tensor] = []
        self._acts: list[tuple[int, int, torch.Tensor]] = []
        self._losses: list[torch.Tensor] = []
        self._last_layer = -1
        self._forward_seen = False
        self._exec_order: list[int] = []
        self._order_done = False
        self._snapshot: list[torch.Tensor] | None = None
        self._manual_snapshot_step: int | None = None
        self._pre_done = False
        self._grads_after_step = False
        self._snap_fresh = False
        self._grad_blk: tuple[torch.Tensor, bool, tuple[int, ...]] | None = None
        self._closed = False
        self._decide(0)

        # -- hooks (installed once; removed by close) ----------------------------------------
        self._handles: list[Any] = []
        self._handles.append(model.register_forward_pre_hook(self._on_root_forward))
        # Layer and activation hooks are present only while the pending step needs them: a
        # module with no hooks takes PyTorch's fast call path, so unrecorded steps (and the
        # activation modules on non-detail steps) cost nothing.
        self._layer_handles: list[Any] = []
        self._act_handles: list[Any] = []
        self._compiled = False  # set when a hook runs inside torch.compile tracing
        self._clip: Any = None  # the last ClipResult of gradwatch's clipping on this model
        self._param_ids = {id(p) for p in params}
        if "clip" in self._need:
            from gradwatch.remedies import clipping

            self._clip_ref = weakref.WeakMethod(self._on_clip)
            clipping._LISTENERS.append(self._clip_ref)
        self._sync_hooks()
        for opt in optimizers:
            self._handles.append(opt.register_step_pre_hook(self._on_opt_pre))
            self._handles.append(opt.register_step_post_hook(self._on_opt_post))
        self._scaler_patched = False
        if scaler is not None:
            scaler.step = self._wrap_scaler_step(type(scaler).step.__get__(scaler))
            self._scaler_patched = True

        # -- structure (issue 11): meta["structure"] = describe(model), refined from the loss's
        # autograd graph at the first step with a loss tensor (residual joins, attention).
        # Guarded: reading the structure must never break training.
        self._structure: dict[str, Any] | None = _describe_structure(model, None)
        self._structure_from_graph = False
        # -- end structure ------------------------------------------------------------------

        if self.run_dir is not None:
            write_json_atomic(self.run_dir / META, self._meta("running"))
            (self.run_dir / FINDINGS).touch()
            _install_sigterm()
        _LIVE.add(self)

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _check_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
        if optimizer is None:
            return []
        opts = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
        for o in opts:
            if not isinstance(o, torch.optim.Optimizer):
                raise GradwatchTypeError(
                    f"optimizer must be a torch.optim.Optimizer (or a list of them), "
                    f"got {type(o).__name__}"
                )
        return opts

    def _prepare_run_dir(self, overwrite: bool) -> None:
        rd = self.run_dir
        assert rd is not None
        if rd.exists() and not rd.is_dir():
            raise RunDirectoryError(f"run_dir {str(rd)!r} exists and is not a directory")
        rd.mkdir(parents=True, exist_ok=True)
        self._lock_path = run_lock.acquire(rd)  # raises RunLockedError if held
        try:
            if (rd / META).exists() or (rd / STATS_DIR).exists():
                if not overwrite:
                    raise RunDirectoryError(
                        f"run_dir {str(rd)!r} already holds a run; choose a new run_dir, or "
                        "pass overwrite=True to replace it"
                    )
                shutil.rmtree(rd / STATS_DIR, ignore_errors=True)
                for f in (META, FINDINGS):
                    (rd / f).unlink(missing_ok=True)
        except BaseException:
            run_lock.release(self._lock_path)
            self._lock_path = None
            raise

    # ------------------------------------------------------------------------------ meta
    def _meta(self, status: str) -> dict[str, Any]:
        order = self._exec_order + [i for i in range(len(self.layers)) if i not in self._exec_order]
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "status": status,
            "started": self._started,
            "updated": time.time(),
            "steps_seen": self._step,
            "steps_recorded": self._n_recorded,
            "layers": [self._layer_names[i] for i in order],
            "layer_order": "execution" if self._exec_order else "registration",
            "diagnosed": self._diagnosed,
            "layer_info": {
                ly.name: {
                    "type": ly.type_name,
                    "params": int(sum(p.numel() for p in ly.module.parameters(recurse=False))),
                    "shapes": [list(p.shape) for p in ly.module.parameters(recurse=False)],
                }
                for ly in self.layers
            },
            "activations": {
                name: {"type": type(m).__name__, "family": fam}
                for name, m, fam in self._acts_info
            },
            "structure": self._structure,  # issue 11 structure block
            "model": {
                "class": type(self.model).__name__,
                "parameters": int(n_params),
                "trainable": int(
                    sum(p.numel() for p in self.model.parameters() if p.requires_grad)
                ),
                "repr": repr(self.model)[:20000],
            },
            "settings": {
                "every": self.every if isinstance(self.every, int | str) else repr(self.every),
                "detail_every": self.detail_every,
                "stats": list(self.stats),
                "optimizer": [type(o).__name__ for o in self._optimizers] or None,
                "scaler": type(self._scaler).__name__ if self._scaler is not None else None,
                "flush_every": self.flush_every,
                "flush_secs": self.flush_secs,
                **self._config,
            },
            "versions": {
                "gradwatch": _version(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
            },
            "host": {"pid": os.getpid(), "platform": platform.platform()},
            "distributed": {"world_size": self.world_size} if self._dist else None,
        }

    # ------------------------------------------------------------------------- schedule
    def _decide(self, step: int) -> None:
        """Decide whether step ``step`` is recorded, and whether in detail."""
        self._rec = bool(self._schedule(step))
        self._detail = self._rec and (self._n_recorded % self.detail_every == 0)
        self._rec_act = self._rec and "act" in self._need and (
            self._detail or not ({"act_mean", "act_std"} & self._detail_stats)
        )
        self._grad_max = "grad_max_abs" in self.stats and (
            self._detail or "grad_max_abs" not in self._detail_stats
        )

    def _sync_hooks(self) -> None:
        """Install or remove the per-layer and per-activation hooks for the pending step."""
        want_layers = self._rec and bool({"backprop", "act"} & self._need)
        if want_layers and not self._layer_handles:
            self._layer_handles = [
                ly.module.register_forward_hook(partial(self._on_layer_forward, li))
                for li, ly in enumerate(self.layers)
            ]
        elif not want_layers and self._layer_handles:
            for h in self._layer_handles:
                h.remove()
            self._layer_handles = []
        if self._rec_act and not self._act_handles:
            self._act_handles = [
                module.register_forward_hook(partial(self._on_act_forward, ai, fam))
                for ai, (_, module, fam) in enumerate(self._acts_info)
            ]
        elif not self._rec_act and self._act_handles:
            for h in self._act_handles:
                h.remove()
            self._act_handles = []

    # -------------------------------------------------------------------- HOT PATH: hooks
    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self._forward_seen = True
            self._last_layer = -1

    def _on_layer_forward(self, li: int, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            # Under torch.compile the hooks do nothing (no graph break): the back-propagated
            # signal and activation statistics are not recorded; gradient, update and loss
            # statistics (taken outside the compiled region) are. close() says so once.
            self._compiled = True
            return
        self._last_layer = li
        if not self._rec or not torch.is_grad_enabled():
            return
        if not self._order_done and li not in self._exec_order:
            self._exec_order.append(li)
        if "backprop" in self._need:
            if type(out) is torch.Tensor:
                if out.requires_grad:
                    fn = out.grad_fn
                    if fn is not None:
                        fn.register_prehook(partial(self._on_backprop, li))
                    else:
                        out.register_hook(partial(self._on_backprop_tensor, li))
            else:
                seen: set[int] = set()
                for t in _tensors(out):
                    if t.requires_grad:
                        fn = t.grad_fn
                        if fn is None:
                            t.register_hook(partial(self._on_backprop_tensor, li))
                        elif id(fn) not in seen:
                            seen.add(id(fn))
                            fn.register_prehook(partial(self._on_backprop, li))

    def _on_backprop(self, li: int, grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        # pre-hook of the autograd node that produced the layer's output: its incoming
        # gradients are d loss / d output (all outputs of that node).
        if len(grad_outputs) == 1:
            g = grad_outputs[0]
            if g is None:
                return
            norm = norm32(g)
        else:
            gs = [g for g in grad_outputs if g is not None]
            if not gs:
                return
            norm = torch.linalg.vector_norm(
                torch.stack([norm32(g) for g in gs])
            )
        self._bp_layers.append(li)
        self._bp_norms.append(norm)

    def _on_backprop_tensor(self, li: int, grad: torch.Tensor) -> None:
        self._bp_layers.append(li)
        self._bp_norms.append(norm32(grad))

    def _on_act_forward(self, ai: int, fam: str, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling():
            self._compiled = True
            return
        if self._rec_act and self._last_layer >= 0 and torch.is_grad_enabled():
            if type(out) is torch.Tensor and out.numel() > 0:
                self._acts.append((self._last_layer, ai, out.detach()))

    def _on_clip(self, result: Any, params: list[torch.Tensor]) -> None:
        # gradwatch's clipping ran: keep its tensors if it clipped this model's gradients
        if self._rec and params and id(params[0]) in self._param_ids:
            self._clip = result

    def _on_opt_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._pre_done:
            return  # several optimizers: the first one to step takes the gradient statistics
        self._pre_done = True
        if not self._rec:
            return
        # the hook sees (optimizer, *args): a closure is the callable among them
        closure = kwargs.get("closure") if kwargs else None
        if closure is None:
            closure = next((a for a in args if callable(a)), None)
        if callable(closure):
            # optimizer.step(closure) runs backward inside the step: this step's gradients
            # exist only after it (the weight snapshot below is right: the closure does not
            # change weights)
            self._grads_after_step = True
        else:
            self._take_grad_stats()
        if self._detail and "update" in self._need:
            self._take_snapshot()
            self._snap_fresh = True

    def _take_snapshot(self) -> None:
        """Copy the parameters into the preallocated snapshot (one fused copy)."""
        params, snap = self._params, self._snapshot
        p0 = params[0]
        if snap is None or snap[0].dtype != p0.dtype or snap[0].device != p0.device:
            # (re)allocated once, and again only if the model moved to another dtype/device
            self._snapshot = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            torch._foreach_copy_(self._snapshot, params)

    def _on_opt_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer is not self._optimizers[-1]:
            return  # the step closes when the last listed optimizer has stepped
        if self._grads_after_step:
            self._grads_after_step = False
            self._take_grad_stats()
        self._close_step()

    def take_gradients(self) -> None:
        """Take the pending step's gradient statistics from the gradients as they are now.

        For training frameworks that change gradients between backward and
        ``optimizer.step()`` (clipping, for one): call it at the point where the gradients
        are complete (after accumulation and AMP unscaling, before clipping); the optimizer
        step then records the step without taking them again. Also takes the weight snapshot
        for ``update_ratio``.
        """
        self._ensure_open()
        if not self._optimizers:
            raise GradwatchValueError(
                "take_gradients() needs a Monitor made with optimizer=; without one, "
                "step() takes the gradients"
            )
        self._grads_after_step = False
        if not self._pre_done:
            self._on_opt_pre(self._optimizers[0], (), {})
        elif self._rec:
            self._take_grad_stats()

    def _wrap_scaler_step(self, orig: Callable) -> Callable:
        def step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            before = self._step
            out = orig(optimizer, *args, **kwargs)
            if self._step == before and optimizer is self._optimizers[-1]:
                # GradScaler skipped optimizer.step() (Inf/NaN found): record the step anyway,
                # with the unscaled (non-finite) gradients.
                self._pre_done = True
                if self._rec:
                    self._take_grad_stats()
                self._close_step()
            return out

        return step

    def _take_grad_stats(self) -> None:
        """Gradient block from the current ``.grad`` of every watched parameter."""
        if "grad" not in self._need:
            return
        params = self._params
        grads = [p.grad for p in params]
        plan = None
        if any(g is None for g in grads):
            pids = tuple(i for i, g in enumerate(grads) if g is not None)
            grads = [grads[i] for i in pids]
        else:
            pids = self._all_pids
            plan = self._plan
            if plan is None or plan.device != grads[0].device or plan.dtype != grads[0].dtype:
                plan = self._plan = NormPlan(grads)
        if not grads:
            self._grad_blk = None
            return
        if len({g.device for g in grads}) == 1:
            block, has_counts = grad_block(grads, self._grad_max, plan)
        else:  # parameters on several devices: one block per device, moved to the first
            block, has_counts = _multi_device_grad_block(grads, self._grad_max)
        self._grad_blk = (block, (has_counts, self._grad_max), pids)

    def _param_plan(self) -> NormPlan:
        plan = getattr(self, "_wplan", None)
        p0 = self._params[0]
        if plan is None or plan.device != p0.device or plan.dtype != p0.dtype:
            plan = self._wplan = NormPlan(self._params)
        return plan

    def _unscale(self) -> torch.Tensor | float:
        s = self._scaler
        if s is not None and s.is_enabled() and getattr(s, "_scale", None) is not None:
            return s._scale.to(torch.float32).reciprocal()
        return 1.0

    def _record_step(self) -> None:
        """Turn what the hooks kept for the pending step into blocks (HOT PATH, once a step)."""
        step = self._step
        buf = self._buffer
        if self._grad_blk is not None:
            block, flags, pids = self._grad_blk
            buf.append(Block(step, "grad", (pids, *flags), block))
        if self._bp_norms:
            norms = torch.stack(self._bp_norms)
            inv = self._unscale()
            if not isinstance(inv, float):
                norms = norms * inv.to(norms.device)
            buf.append(Block(step, "bp", tuple(self._bp_layers), norms))
        if self._acts:
            acts = [a for _, _, a in self._acts]
            fams = [self._acts_info[ai][2] for _, ai, _ in self._acts]
            if len({a.device for a in acts}) == 1:
                sat_dead = self._detail and bool({"saturated_frac", "dead_frac"} & set(self.stats))
                blk = act_block(acts, fams, detail=sat_dead)
                key = tuple(
                    (li, FAMILY_CODE[fams[k]], a.numel(), a[0].numel() if a.dim() >= 2 else 1)
                    for k, ((li, _, _), a) in enumerate(zip(self._acts, acts, strict=True))
                )
                buf.append(Block(step, "act", key, blk))
        if self._losses:
            loss = torch.stack(self._losses).mean().reshape(1).to(torch.float32)
            buf.append(Block(step, "loss", (), loss))
        if self._clip is not None:
            norm, coef = self._clip
            dev = norm.device
            buf.append(Block(step, "clip", (), torch.stack([norm.float(), coef.float().to(dev)])))
        if self._detail and "update" in self._need and not self._optimizers:
            # no optimizer: weights now; the update is measured at the next step() call
            with torch.no_grad():
                wblk = weight_block(self._params, self._param_plan())
            buf.append(Block(step, "weight", self._all_pids, wblk))
            self._take_snapshot()
            self._manual_snapshot_step = step
        self._n_recorded += 1

    def _close_step(self) -> None:
        """Close the pending step: record it if scheduled, reset, maybe flush."""
        if self._compiled and not self._compile_warned:
            self._compile_warned = True
            warnings.warn(
                "gradwatch: the model runs under torch.compile; to keep the compiled graph "
                "whole, backprop_norm and activation statistics are not recorded for it "
                "(gradient, weight, update and loss statistics are). Watch the uncompiled "
                "model for the full set.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._rec:
            if self._snap_fresh:
                self._snap_fresh = False
                with torch.no_grad():
                    buf = update_block(self._snapshot, self._params, self._param_plan())
                self._buffer.append(Block(self._step, "update", self._all_pids, buf))
            self._record_step()
            if self._exec_order:
                self._order_done = True
        self._bp_layers = []
        self._bp_norms = []
        self._acts = []
        self._losses = []
        self._clip = None
        self._grad_blk = None
        self._pre_done = False
        self._forward_seen = False
        self._step += 1
        self._decide(self._step)
        self._sync_hooks()
        if len(self._buffer) and (
            self._n_recorded % self.flush_every == 0
            or time.monotonic() - self._last_flush > self.flush_secs
        ):
            self.flush(wait=False)

    # ------------------------------------------------------------------------ public API
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def step_count(self) -> int:
        """Number of training steps seen so far (recorded or not)."""
        return self._step

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step (or, with ``optimizer=``, pass the loss).

        Without ``optimizer=``: call it after ``loss.backward()`` (and before
        ``optimizer.step()``, so that the update ratio covers the right step); it records
        the pending step. With ``optimizer=``, steps close on ``optimizer.step()`` and this
        only attaches the loss: to the step just closed if no forward pass has run since,
        otherwise to the pending step.

        Args:
            loss: the training loss (a tensor is kept on its device; no host sync).
        """
        self._ensure_open()
        # -- structure (issue 11): once, from the first loss tensor's autograd graph ---------
        if (
            not self._structure_from_graph
            and isinstance(loss, torch.Tensor)
            and loss.grad_fn is not None
        ):
            self._structure_from_graph = True
            found = _describe_structure(self.model, loss)
            if found is not None:
                self._structure = found
        # -- end structure ------------------------------------------------------------------
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                if loss.numel() != 1:
                    raise GradwatchValueError(
                        f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
                        "pass loss.mean() or the value you call backward() on"
                    )
                val = loss.detach().reshape(())
            elif isinstance(loss, int | float) and not isinstance(loss, bool):
                val = torch.tensor(float(loss))
            else:
                raise GradwatchTypeError(
                    f"loss must be a tensor or a number, got {type(loss).__name__}"
                )
        if self._optimizers:
            if loss is not None:
                if not self._forward_seen and self._step > 0:
                    prev = self._step - 1  # the step that optimizer.step() just closed
                    if self._schedule(prev) and self._late_loss_step != prev:
                        self._late_loss_step = prev  # one loss per step
                        self._buffer.append(
                            Block(prev, "loss", (), val.to(torch.float32).reshape(1))
                        )
                elif self._rec:
                    self._losses.append(val)
            return
        # manual mode
        if loss is not None and self._rec:
            self._losses.append(val)
        if self._manual_snapshot_step is not None and self._snapshot is not None:
            with torch.no_grad():
                blk = update_block(self._snapshot, self._params, self._param_plan())
            self._buffer.append(Block(self._manual_snapshot_step, "update", self._all_pids, blk))
            self._manual_snapshot_step = None
        if self._rec:
            self._take_grad_stats()
        self._close_step()

    def flush(self, wait: bool = True) -> None:
        """Hand buffered statistics to the writer; with ``wait``, until they are written.

        Under ``torch.distributed`` every rank must call it together (steps, close() and the
        step-count schedule do).
        """
        if self._dist:
            self._flush_distributed(wait)
        elif self._buffer:
            batch = self._writer.submit(self._buffer)
            self._buffer = []
            if wait:
                self._writer.wait(batch)
        self._last_flush = time.monotonic()
        self._report_write_errors()
        if self.run_dir is not None and self._n_recorded and not self._meta_ordered:
            self._meta_ordered = True
            self._write_meta("running")

    def _flush_distributed(self, wait: bool) -> None:
        from gradwatch.integrations import distributed as gw_dist

        blocks, self._buffer = self._buffer, []
        structure = [(b.step, b.kind, b.key, b.tensor.numel()) for b in blocks]
        flat = (
            gw_dist.to_host(torch.cat([b.tensor.reshape(-1).float() for b in blocks]))
            if blocks
            else np.zeros(0, dtype=np.float32)
        )
        gathered = gw_dist.gather_to_rank0(structure, flat, self._pg)
        if self.rank == 0 and gathered is not None and structure:
            structure, flat = gw_dist.combine(gathered)
            batch = self._writer.submit_flat(structure, flat)
            if wait:
                self._writer.wait(batch)

    def _store_findings(self) -> None:
        """Diagnose the finished run and write ``findings.jsonl`` (never raises)."""
        if self.run_dir is None or not self._diagnose_at_close or not self._n_recorded:
            return
        try:
            from gradwatch.diagnose import diagnose, store_findings
            from gradwatch.store.reader import load

            store_findings(self.run_dir, diagnose(load(self.run_dir)))
            self._diagnosed = True
            self._write_meta(self._status)
        except Exception as exc:  # noqa: BLE001 - a diagnosis bug must not lose the run
            warnings.warn(
                f"gradwatch: the run in {self.run_dir} is complete, but diagnosing it failed "
                f"({exc!r}); run gw.diagnose on it later",
                RuntimeWarning,
                stacklevel=3,
            )

    def _report_write_errors(self) -> None:
        """Warn (from the training thread) about writes that failed; training goes on."""
        errs = self._writer.take_errors()
        if errs and not self._write_warned:
            self._write_warned = True
            where = self.run_dir if self.run_dir is not None else "memory"
            warnings.warn(
                f"gradwatch could not write statistics to {where}: {errs[-1]!r}. Training goes "
                "on; the rows are kept and retried at the next flush, and everything written "
                "before stays readable",
                RuntimeWarning,
                stacklevel=3,
            )
        elif not errs and self._write_warned and self._writer.error is None:
            self._write_warned = False

    _write_warned = False
    _compile_warned = False
    _grads_after_step = False
    _late_loss_step = -1
    _diagnosed = False
    _meta_ordered = False  # meta.json rewritten once the execution order of layers is known

    def _write_meta(self, status: str) -> None:
        if self.run_dir is None:
            return
        try:
            write_json_atomic(self.run_dir / META, self._meta(status))
        except OSError as exc:
            self._writer._report(exc)
            self._report_write_errors()

    def close(self, status: str | None = None) -> None:
        """Flush everything, write the final meta.json, remove every hook. Idempotent.

        Args:
            status: the run's final status in meta.json: "closed" (default), "failed" or
                "interrupted" (what leaving a ``with`` block on an exception writes).
        """
        if status is not None:
            if status not in ("closed", "failed", "interrupted"):
                raise GradwatchValueError(
                    f"status must be 'closed', 'failed' or 'interrupted', got {status!r}"
                )
            self._status = status
        if self._closed:
            return
        self._closed = True
        try:
            for h in self._handles + self._layer_handles + self._act_handles:
                h.remove()
            from gradwatch.remedies import clipping

            ref = getattr(self, "_clip_ref", None)
            if ref is not None and ref in clipping._LISTENERS:
                clipping._LISTENERS.remove(ref)
            self._handles.clear()
            self._layer_handles.clear()
            self._act_handles.clear()
            if self._scaler_patched:
                try:
                    del self._scaler.step  # back to the class's method
                except AttributeError:
                    pass
                self._scaler_patched = False
            self.flush(wait=False)
            self._writer.close()
            self._write_meta(self._status)
            self._report_write_errors()
            self._store_findings()
        finally:
            self._snapshot = None
            if self._lock_path is not None:
                run_lock.release(self._lock_path)
                self._lock_path = None
            _LIVE.discard(self)
            _restore_sigterm()

    _status = "closed"

    def _ensure_open(self) -> None:
        if self._closed:
            raise GradwatchValueError(
                "this Monitor is closed; create a new one with gw.watch(...) to record more"
            )

    @property
    def run(self) -> Run:
        """The run recorded so far, as a :class:`~gradwatch.store.reader.Run` (flushes first).

        Under ``torch.distributed`` it does not flush (a flush is collective): read it after
        ``close()``, on rank 0.
        """
        if not self._closed and not self._dist:
            self.flush(wait=True)
        if self.run_dir is not None:
            from gradwatch.store.reader import load

            return load(self.run_dir)
        meta = self._meta("closed" if self._closed else "running")
        return Run(meta=meta, stats=tables_to_frame(list(self._writer.tables)), path=None)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            interrupted = issubclass(exc_type, KeyboardInterrupt)
            self._status = "interrupted" if interrupted else "failed"
        self.close()

    def __repr__(self) -> str:
        where = str(self.run_dir) if self.run_dir else "memory"
        state = "closed" if self._closed else f"step {self._step}"
        return f"Monitor({len(self.layers)} layers -> {where}, {state})"


def _multi_device_grad_block(
    grads: list[torch.Tensor], with_max: bool
) -> tuple[torch.Tensor, bool]:
    """Gradient block when parameters live on several devices (model parallel)."""
    dev0 = grads[0].device
    by_dev: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_dev.setdefault(g.device, []).append(i)
    p = len(grads)
    k = 2 if with_max else 1
    out = torch.zeros(k + 1, p, device=dev0)
    any_counts = False
    for idx in by_dev.values():
        blk, has = grad_block([grads[i] for i in idx], with_max)
        n = len(idx)
        blk = blk.to(dev0).view(-1, n)
        sel = torch.tensor(idx, device=dev0)
        out[: k, sel] = blk[:k]
        if has:
            out[k, sel] = blk[k]
            any_counts = True
    return (out.reshape(-1) if any_counts else out[:k].reshape(-1)), any_counts


def _describe_structure(model: nn.Module, loss: torch.Tensor | None) -> dict[str, Any] | None:
    """``gradwatch.structure.describe``, or None if it fails (it must never break training)."""
    try:
        from gradwatch.structure import describe

        return describe(model, loss)
    except Exception as exc:  # noqa: BLE001 - a structure bug must not stop training
        warnings.warn(
            f"gradwatch: could not read the model's structure ({exc!r}); the diagnosis will "
            "not know about its residual connections",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _version() -> str:
    from gradwatch import __version__

    return __version__


def watch(
    model: nn.Module,
    run_dir: str | Path | None = None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    every: int | str | Callable[[int], bool] = 1,
    activations: bool = True,
    **options: Any,
) -> Monitor:
    """Watch a model's gradients, activations and updates while it trains.

    Args:
        model: the network.
        run_dir: directory to write the run to; None keeps the run in memory
            (``monitor.run``).
        optimizer: with it, statistics are taken at each ``optimizer.step()`` (gradient
            accumulation counts one step per optimizer step); without it, call
            ``monitor.step(loss=...)`` after each backward pass.
        every: record every k-th step, ``"log"`` (every one of the first 10 steps, then ~10
            per decade), or a callable ``step -> bool``.
        activations: record activation statistics (mean, std, saturation, dead units).
        **options: ``detail_every`` (record the slowly changing statistics — weight norm,
            update ratio, activation statistics — every n-th recorded step; default 10, 1 for
            everything every step), ``stats`` (names to record), ``scaler`` (the
            ``torch.amp.GradScaler`` in use: gradients are then recorded unscaled and skipped
            steps are recorded as non-finite), ``flush_every`` (steps, default 1000),
            ``flush_secs`` (default 5), ``overwrite`` (replace an existing run), ``name``,
            ``config`` (dict stored in meta.json), ``diagnose`` (default True: diagnose the
            run when it closes and write ``findings.jsonl``), ``tensorboard`` (a log dir:
            every flushed value is also written there live, as ``gradwatch report
            --tensorboard`` would; needs the ``tensorboard`` package).

    Returns:
        the :class:`Monitor` (a context manager).

    Raises:
        GradwatchTypeError: ``model`` is not an nn.Module, or a wrong argument type.
        GradwatchValueError: ``model`` has no parameters, ``every < 1``, unknown stats.
        RunLockedError: another writer holds ``run_dir``.
        RunDirectoryError: ``run_dir`` already holds a run (pass ``overwrite=True``).
    """
    return Monitor(model, run_dir, optimizer, every, activations, **options)
