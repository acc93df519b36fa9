"""Validation of :func:`gradwatch.watch` arguments, before anything touches the model or disk.

Each check raises a gradwatch error naming the argument, what was wrong and the fix.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from torch import nn

from gradwatch.argcheck import check_out_dir
from gradwatch.errors import GradwatchTypeError, GradwatchValueError
from gradwatch.jsonable import jsonable
from gradwatch.layers import check_hookable, find_layers
from gradwatch.schedule import make_schedule
from gradwatch.stats import ALL_STATS, DEFAULT_STATS, SOURCES
from gradwatch.store.rundir import check_run_dir
from gradwatch.store.writer import MAX_PENDING_ROWS


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_flush_every(value: Any) -> int:
    """A positive whole number of recorded steps."""
    if not _is_number(value):
        raise GradwatchTypeError(
            f"flush_every must be a positive whole number of steps, got "
            f"{type(value).__name__}; pass e.g. flush_every=1000"
        )
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise GradwatchValueError(
            f"flush_every must be a whole number of steps >= 1, got {value!r}; pass e.g. "
            "flush_every=1000 (flush_secs bounds the time between flushes)"
        )
    return int(value)


def check_flush_secs(value: Any) -> float:
    """A positive number of seconds; ``float('inf')`` turns time-based flushes off."""
    if not _is_number(value):
        raise GradwatchTypeError(
            f"flush_secs must be a positive number of seconds, got {type(value).__name__}; "
            "pass e.g. flush_secs=5"
        )
    if math.isnan(value) or value <= 0:
        raise GradwatchValueError(
            f"flush_secs must be a positive number of seconds, got {value!r}; pass e.g. "
            "flush_secs=5, or float('inf') to flush by step count only"
        )
    return float(value)


def check_stats(stats: Any, known: Iterable[str], default: Iterable[str] | None = None
                ) -> set[str]:
    """The requested statistic names (None: ``default``, or every known one)."""
    known = tuple(known)
    if stats is None:
        return set(known if default is None else default)
    if isinstance(stats, str) or not isinstance(stats, Iterable):
        raise GradwatchTypeError(
            f"stats must be a list of statistic names or None, got {type(stats).__name__} "
            f"({stats!r}); pass e.g. stats=['grad_norm', 'loss']"
        )
    names = list(stats)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise GradwatchTypeError(
            f"stats must hold statistic names (str), got {type(bad[0]).__name__} {bad[0]!r}; "
            f"known: {', '.join(known)}"
        )
    unknown = set(names) - set(known)
    if unknown:
        raise GradwatchValueError(
            f"stats has unknown names {sorted(unknown)}; known: {', '.join(known)}"
        )
    if not names:
        raise GradwatchValueError(
            "stats is empty: nothing would be recorded; pass None for every statistic, or "
            "name some, e.g. stats=['grad_norm', 'loss']"
        )
    return set(names)


#: The Monitor's own settings in meta.json's ``settings``: a ``config=`` key of the same name
#: does not replace them (it is kept in meta.json's ``config``).
SETTINGS = ("every", "detail_every", "stats", "optimizer", "scaler", "flush_every", "flush_secs",
            "precision", "loss_scale")


def check_config(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict with str keys, stored in meta.json (``config``, ``settings``).

    A key that names one of the Monitor's :data:`SETTINGS` is warned about: it does not
    replace the setting in ``settings``.
    """
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise GradwatchTypeError(
            f"config must be a dict (stored in meta.json), got {type(config).__name__}; pass "
            "e.g. config={'lr': 0.1}"
        )
    bad = [k for k in config if not isinstance(k, str)]
    if bad:
        raise GradwatchTypeError(
            f"config keys must be str (JSON object keys), got {type(bad[0]).__name__} "
            f"{bad[0]!r}; use string keys"
        )
    try:
        json.dumps(jsonable(config), allow_nan=False)
    except (RecursionError, ValueError, TypeError) as exc:
        raise GradwatchValueError(
            f"config cannot be stored in meta.json as JSON ({type(exc).__name__}: "
            f"{str(exc)[:100]}); a dict that holds itself, or nesting thousands deep, has no "
            "JSON form: pass plain values (numbers, strings, lists, dicts)"
        ) from None
    clash = [k for k in config if k in SETTINGS]
    if clash:
        warnings.warn(
            f"gradwatch: config key(s) {clash} name gradwatch's own setting(s); meta.json keeps "
            "the setting in use under settings and your value under config (rename the key "
            "to keep them apart, e.g. 'my_every')",
            UserWarning,
            stacklevel=5,  # check_config < check_watch < Monitor < watch < the caller
        )
    return dict(config)


def check_resume(resume: bool, run_dir: Any) -> None:
    """``resume=True`` continues the run in ``run_dir``: it needs one."""
    if resume and run_dir is None:
        raise GradwatchValueError(
            "resume=True continues the run in run_dir, but run_dir is None (a run kept in "
            "memory has nothing to resume); pass the run directory, e.g. "
            "gw.watch(model, 'runs/a', resume=True)"
        )


def check_scaler(scaler: Any, optimizers: list) -> None:
    """None, or a GradScaler instance (with the optimizer it steps)."""
    if scaler is None:
        return
    if isinstance(scaler, type):
        raise GradwatchTypeError(
            f"scaler must be a GradScaler instance, got the class {scaler.__name__}; pass the "
            "object your training calls scaler.step(optimizer) on, e.g. "
            "scaler = torch.amp.GradScaler()"
        )
    if not callable(getattr(scaler, "step", None)):
        raise GradwatchTypeError(
            f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}"
        )
    if not optimizers:
        raise GradwatchValueError(
            "scaler= needs optimizer=: pass the optimizer that scaler.step() steps"
        )


def check_distributed(distributed: Any, process_group: Any) -> None:
    """``distributed=True`` needs torch.distributed set up (a process group)."""
    if distributed is None:
        return
    check_flag("distributed", distributed)
    if not distributed:
        return
    import torch.distributed as dist

    if process_group is None and not (dist.is_available() and dist.is_initialized()):
        raise GradwatchValueError(
            "distributed=True, but torch.distributed has no process group; call "
            "torch.distributed.init_process_group(...) on every rank before gw.watch, or pass "
            "distributed=None (the default: on when a process group is initialised)"
        )


def check_flag(name: str, value: Any) -> bool:
    """True or False (not a truthy stand-in such as 1 or "no")."""
    if not isinstance(value, bool):
        raise GradwatchTypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_diagnose(value: Any) -> bool | Callable:
    """True, False, or a callable run directory -> findings."""
    if isinstance(value, bool) or callable(value):
        return value
    raise GradwatchTypeError(
        f"diagnose must be True, False or a callable (run directory -> findings), got "
        f"{type(value).__name__}"
    )


def check_positive_int(name: str, value: Any, example: int) -> int:
    """A positive int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise GradwatchTypeError(
            f"{name} must be a positive int, got {type(value).__name__}; pass e.g. "
            f"{name}={example}"
        )
    if value < 1:
        raise GradwatchValueError(f"{name} must be >= 1, got {value}; pass e.g. {name}={example}")
    return value


def check_optional_path(name: str, value: Any) -> None:
    """None or a non-empty path."""
    if value is None:
        return
    if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
        raise GradwatchTypeError(
            f"{name} must be a directory path or None, got {type(value).__name__}"
        )
    if not str(os.fspath(value)).strip():
        raise GradwatchValueError(f"{name} must not be empty; pass a directory path or None")
    check_out_dir(name, value)  # not a file, not below one, no name too long


def check_name(value: Any) -> None:
    """None or a str."""
    if value is not None and not isinstance(value, str):
        raise GradwatchTypeError(f"name must be a str or None, got {type(value).__name__}")


def check_initialised(model: Any) -> None:
    """Refuse a model with uninitialised (lazy) parameters: their shapes are not known yet.

    A TorchScript module is refused too (see :func:`gradwatch.layers.check_hookable`).
    """
    if not isinstance(model, nn.Module):
        return  # find_layers names the problem
    check_hookable(model)
    lazy = [n for n, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise GradwatchValueError(
            f"model has uninitialised lazy parameters ({', '.join(lazy[:3])}"
            f"{', ...' if len(lazy) > 3 else ''}); run one forward pass on a batch before "
            "gw.watch(model, ...) so that their shapes are known"
        )


def check_precision(precision: Any, loss_scale: Any, scaler: Any = None
                    ) -> tuple[str | None, float]:
    """The low-precision format named (or None) and the loss scale its casts see.

    ``precision``: ``"fp16"``, ``"bf16"``, ``"e4m3"``, ``"e5m2"`` or the torch dtype
    (``torch.float16``, ``torch.bfloat16``, ``torch.float8_e4m3fn``, ``torch.float8_e5m2``).
    ``loss_scale``: a positive finite number, or None (1: no loss scaling); not with
    ``scaler=``, whose current scale is used.
    """
    from gradwatch.stats.precision import FORMATS

    fmt = None
    if precision is not None:
        by_dtype = {spec["dtype"]: name for name, spec in FORMATS.items()}
        fmt = by_dtype.get(precision, precision)
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise GradwatchValueError(
                f"precision {precision!r} is not supported; supported: fp16 (torch.float16), "
                "bf16 (torch.bfloat16), e4m3 (torch.float8_e4m3fn), e5m2 (torch.float8_e5m2)"
            )
    if loss_scale is None:
        return fmt, 1.0
    if not _is_number(loss_scale) or not math.isfinite(loss_scale) or loss_scale <= 0:
        raise GradwatchValueError(
            f"loss_scale must be a positive finite number or None, got {loss_scale!r}; pass "
            "e.g. loss_scale=65536.0 (GradScaler's initial scale)"
        )
    if scaler is not None:
        raise GradwatchValueError(
            "loss_scale= and scaler= both set the loss scale: with a GradScaler its current "
            "scale is used; drop loss_scale="
        )
    return fmt, float(loss_scale)


def check_watch(model: Any, run_dir: Any, optimizer: Any, every: Any, activations: Any,
                detail_every: Any, stats: Any, scaler: Any, flush_every: Any, flush_secs: Any,
                overwrite: Any, name: Any, config: Any, distributed: Any, diagnose: Any,
                tensorboard: Any, resume: Any, max_pending_rows: Any,
                process_group: Any = None, precision: Any = None,
                loss_scale: Any = None) -> SimpleNamespace:
    """Every argument of :func:`gradwatch.watch`, checked before anything touches the model.

    Returns the normalised values (``layers``, ``schedule``, ``wanted``, ``optimizers``, ...).
    """
    from gradwatch.monitor.optim import check_optimizers

    check_initialised(model)
    layers = find_layers(model)  # raises for non-modules and models without parameters
    schedule = make_schedule(every, "every")
    if isinstance(detail_every, bool) or not isinstance(detail_every, int):
        raise GradwatchTypeError(
            f"detail_every must be a positive int, got {type(detail_every).__name__}"
        )
    if detail_every < 1:
        raise GradwatchValueError(
            f"detail_every must be >= 1, got {detail_every}; use 1 to record every "
            "statistic at every recorded step"
        )
    flush_every = check_flush_every(flush_every)
    flush_secs = check_flush_secs(flush_secs)
    wanted = check_stats(stats, ALL_STATS, DEFAULT_STATS)
    if run_dir is not None:
        run_dir = check_run_dir(run_dir)
    config = check_config(config)
    for flag, val in (("activations", activations), ("overwrite", overwrite), ("resume", resume)):
        check_flag(flag, val)
    check_distributed(distributed, process_group)
    diagnose = check_diagnose(diagnose)
    check_positive_int("max_pending_rows", max_pending_rows, MAX_PENDING_ROWS)
    check_optional_path("tensorboard", tensorboard)
    check_name(name)
    if overwrite and resume:
        raise GradwatchValueError(
            "overwrite=True and resume=True contradict each other: resume continues the "
            "run in run_dir, overwrite deletes it; pass one of them"
        )
    check_resume(resume, run_dir)
    if not activations:
        wanted -= set(SOURCES["act"])
    fmt, scale = check_precision(precision, loss_scale, scaler)
    if fmt is not None:
        wanted |= set(SOURCES["precision"])
    optimizers = check_optimizers(optimizer, model)
    check_scaler(scaler, optimizers)
    return SimpleNamespace(
        layers=layers, schedule=schedule, flush_every=flush_every, flush_secs=flush_secs,
        wanted=wanted, run_dir=run_dir, config=config, diagnose=diagnose,
        optimizers=optimizers, precision=fmt, loss_scale=scale,
    )


def check_loss(loss: Any, warn: Any) -> Any:
    """The loss of ``Monitor.step`` as a 0-d tensor (its own device), or None.

    A Python number becomes a float32 CPU tensor; a loss on the ``meta`` device holds no
    value (``warn`` is told, None is returned).
    """
    import torch

    if loss is None:
        return None
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise GradwatchValueError(
                f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
                "pass loss.mean() or the value you call backward() on"
            )
        val = loss.detach()
        if val.dim():
            val = val.reshape(())
        if val.dtype.is_complex:
            val = val.real
        if val.is_meta:
            warn("a loss on the meta device")
            return None
        return val
    if isinstance(loss, int | float) and not isinstance(loss, bool):
        try:
            return torch.tensor(float(loss), dtype=torch.float32)
        except OverflowError:
            raise GradwatchValueError(
                f"loss is an integer of {len(str(abs(loss)))} digits, past any float; pass the "
                "loss as a float or a tensor (float('inf') for an infinite one)"
            ) from None
    raise GradwatchTypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")
