"""Training in the loop: remedies a one-batch check cannot judge, verified by short trainings.

A checkup sees one forward and backward pass at initialisation. Attention logits that will
grow, output logits that will drift, Adam's ε that will swamp the update and a learning rate
that will make the loss spike are not there yet; only training shows them. With a
:class:`Trial`, :func:`gradwatch.fix` trains the model it would return for a few steps on the
user's data, watched by ``gw.watch``, once per seed; if the trials show an instability it
trains again with each remedy the findings name, on the same seeds and data, and keeps what
helps:

- ``qk_layernorm`` changes the model (:func:`~gradwatch.remedies.qk_layernorm_`): when it
  helps it is applied to the model ``fix`` returns (as the kind "normalization");
- ``z_loss``, ``warmup``, ``lower_lr``, ``clip_grad_norm`` and ``adam_eps`` change the
  training loop: they are never applied, but recommended with what they measurably did.

A remedy *helps* when fewer of its trials end with a loss spike or divergence (or an
``attention_logit_growth`` / ``output_logit_divergence`` warning), or, with as many, when
its median final loss is lower by :data:`MIN_GAIN` at least. Everything is seeded
(``torch.manual_seed(seed)`` before each trial; minibatches drawn with a generator seeded
the same) and bounded: the trials stop starting once ``budget_s`` seconds have passed, and
what was not tried says so.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.errors import GradwatchError, GradwatchTypeError, GradwatchValueError
from gradwatch.remedies.qk_norm import qk_layernorm_
from gradwatch.remedies.training_loop import SMALL_EPS, Z_LOSS_COEF, cross_entropy, z_loss

#: Remedies the trials can verify, in the order they are tried.
TRIAL_REMEDIES = ("qk_layernorm", "z_loss", "warmup", "lower_lr", "clip_grad_norm",
                  "adam_eps")

#: Findings (severity warning or error) that make a trial unstable.
UNSTABLE = ("loss_spike", "attention_logit_growth", "output_logit_divergence", "diverging",
            "nonfinite")

#: A remedy must lower the median final loss by this fraction to count as better.
MIN_GAIN = 0.02


@dataclass(frozen=True)
class Trial:
    """Short seeded trainings that judge the remedies a checkup cannot.

    Attributes:
        data: (inputs, targets) tensors, first dimension the examples; minibatches of
            ``batch_size`` are drawn from them with a generator seeded by each seed.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` with the learning rate you
            train at (the trials are about your settings).
        steps: optimizer steps per trial.
        batch_size: examples per step.
        seeds: one trial per seed, for the model as it is and for each remedy.
        budget_s: no trial starts after this many seconds.
        remedies: which of :data:`TRIAL_REMEDIES` may be tried.
        warmup_steps: the warmup length tried (default: a fifth of ``steps``).
        lr_factor: the factor ``lower_lr`` tries.
        clip: the max_norm ``clip_grad_norm`` tries.
    """

    data: tuple[Any, Any]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    steps: int = 100
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1)
    budget_s: float = 120.0
    remedies: tuple[str, ...] = TRIAL_REMEDIES
    warmup_steps: int | None = None
    lr_factor: float = 0.3
    clip: float = 1.0


@dataclass
class TrialResult:
    """What the trials measured, for :class:`~gradwatch.remedies.FixReport`."""

    baseline: dict[str, Any] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def default_loss(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer targets ((N, C) or (N, T, C) logits), else mean squared error."""
    if targets.is_floating_point():
        out = output if isinstance(output, torch.Tensor) else output["logits"]
        return torch.nn.functional.mse_loss(out, targets)
    return cross_entropy(output, targets)


def check_trial(trial: object) -> Trial:
    """Return ``trial`` if it is a usable :class:`Trial`; raise a gradwatch error otherwise."""
    if not isinstance(trial, Trial):
        raise GradwatchTypeError(
            f"trial must be a gradwatch.remedies.Trial, got {type(trial).__name__}; e.g. "
            "Trial(data=(x, y), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))"
        )
    data = trial.data
    if not (isinstance(data, tuple | list) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data) and len(data[0]) == len(data[1])):
        raise GradwatchTypeError(
            "trial.data must be (inputs, targets): two tensors with the same first dimension"
        )
    if not callable(trial.optimizer):
        raise GradwatchTypeError("trial.optimizer must be callable as optimizer(params)")
    for name in ("steps", "batch_size"):
        v = getattr(trial, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise GradwatchValueError(f"trial.{name} must be an int >= 1, got {v!r}")
    if not trial.seeds or not all(isinstance(s, int) for s in trial.seeds):
        raise GradwatchValueError(f"trial.seeds must be a non-empty tuple of ints, got "
                                  f"{trial.seeds!r}")
    if not trial.budget_s > 0:
        raise GradwatchValueError(f"trial.budget_s must be > 0, got {trial.budget_s!r}")
    unknown = [r for r in trial.remedies if r not in TRIAL_REMEDIES]
    if unknown:
        raise GradwatchValueError(
            f"trial.remedies has unknown names {unknown}; choose from {', '.join(TRIAL_REMEDIES)}"
        )
    return trial


def train_trial(
    model: nn.Module,
    trial: Trial,
    seed: int,
    loss_fn: Callable[..., torch.Tensor],
    remedy: str | None = None,
) -> dict[str, Any]:
    """One seeded trial of ``model`` (a copy is trained), with one training-loop remedy.

    Returns:
        {"seed", "final_loss", "losses_finite", "unstable" (findings that make it
        unstable), "verdict", "seconds"}.
    """
    from gradwatch.diagnose import diagnose
    from gradwatch.monitor import watch
    from gradwatch.remedies.clipping import clip_grad_norm_
    from gradwatch.verdicts import verdict

    start = time.perf_counter()
    torch.manual_seed(seed)
    work = copy.deepcopy(model)
    work.train()
    opt = trial.optimizer(work.parameters())
    if not isinstance(opt, torch.optim.Optimizer):
        raise GradwatchTypeError(
            f"trial.optimizer returned {type(opt).__name__}, not a torch.optim.Optimizer"
        )
    if remedy == "lower_lr":
        for g in opt.param_groups:
            g["lr"] *= trial.lr_factor
    if remedy == "adam_eps":
        if not all("eps" in g for g in opt.param_groups):
            raise GradwatchValueError("adam_eps: the trial's optimizer has no eps")
        for g in opt.param_groups:
            g["eps"] = SMALL_EPS
    sched = None
    if remedy == "warmup":
        n = trial.warmup_steps or max(1, trial.steps // 5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / n))
    fn = z_loss(loss_fn, Z_LOSS_COEF) if remedy == "z_loss" else loss_fn
    x, y = trial.data
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with watch(work, None, optimizer=opt, diagnose=False) as mon:
        for _ in range(trial.steps):
            idx = torch.randint(0, len(x), (trial.batch_size,), generator=gen)
            loss = fn(work(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if remedy == "clip_grad_norm":
                clip_grad_norm_(work, trial.clip)
            opt.step()
            mon.step(loss=loss)
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
    findings = diagnose(mon.run)
    tail = max(1, len(losses) // 10)
    finite = all(math.isfinite(v) for v in losses)
    return {
        "seed": seed,
        "final_loss": float(np.mean(losses[-tail:])) if finite else math.inf,
        "losses_finite": finite,
        "unstable": sorted({f.kind for f in findings
                            if f.kind in UNSTABLE and f.severity in ("warning", "error")}),
        "remedies_named": [r for f in findings for r in f.remedies],
        "verdict": verdict(findings),
        "seconds": round(time.perf_counter() - start, 2),
    }


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Unstable trials and the median final loss over the seeds."""
    finals = [r["final_loss"] for r in runs]
    return {
        "unstable_trials": sum(bool(r["unstable"]) for r in runs),
        "median_final_loss": float(np.median(finals)) if finals else math.nan,
        "trials": list(runs),
    }


def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether summary ``a`` is measurably better than ``b`` (see the module docstring)."""
    if a["unstable_trials"] != b["unstable_trials"]:
        return a["unstable_trials"] < b["unstable_trials"]
    la, lb = a["median_final_loss"], b["median_final_loss"]
    if not math.isfinite(lb):
        return math.isfinite(la)
    return math.isfinite(la) and la < lb - MIN_GAIN * abs(lb)


def run_trials(
    model: nn.Module, trial: Trial, loss_fn: Callable[..., torch.Tensor]
) -> tuple[nn.Module, TrialResult]:
    """Train ``model`` as it is, then with each remedy the trials call for; keep what helps.

    Returns:
        (the model, with qk-layernorm if it helped; what was measured).
    """
    started = time.perf_counter()
    out = TrialResult()

    def over() -> bool:
        return time.perf_counter() - started > trial.budget_s

    base_runs = [train_trial(model, trial, s, loss_fn) for s in trial.seeds]
    out.baseline = summary(base_runs)
    named = {r for run in base_runs for r in run["remedies_named"]}
    if not out.baseline["unstable_trials"]:
        out.elapsed_s = time.perf_counter() - started
        return model, out
    best_model = model
    for remedy in trial.remedies:
        entry: dict[str, Any] = {"remedy": remedy, "named": remedy in named,
                                 "accepted": False}
        out.tried.append(entry)
        if over():
            entry["skipped"] = f"the trials' time budget ({trial.budget_s:g} s) was spent"
            continue
        candidate = best_model
        try:
            if remedy == "qk_layernorm":
                candidate = copy.deepcopy(best_model)
                entry["rewritten"] = qk_layernorm_(candidate)
                runs = [train_trial(candidate, trial, s, loss_fn) for s in trial.seeds]
            else:
                runs = [train_trial(best_model, trial, s, loss_fn, remedy) for s in trial.seeds]
        except GradwatchError as err:
            entry["skipped"] = str(err)
            continue
        got = summary(runs)
        entry.update(got)
        if better(got, out.baseline):
            entry["accepted"] = True
            if remedy == "qk_layernorm":
                best_model = candidate
                out.applied.append(remedy)
            else:
                out.recommended.append(remedy)
    out.elapsed_s = time.perf_counter() - started
    return best_model, out


def advice_line(remedy: str, entry: dict[str, Any], baseline: dict[str, Any], trial: Trial) -> str:
    """One recommendation with what the trials measured."""
    how = {
        "z_loss": f"wrap the loss: gw.remedies.z_loss(loss_fn, coef={Z_LOSS_COEF:g})",
        "warmup": f"warm the learning rate up: gw.remedies.warmup(optimizer, "
                  f"{trial.warmup_steps or max(1, trial.steps // 5)})",
        "lower_lr": f"lower the learning rate {1 / trial.lr_factor:.3g}×: "
                    f"gw.remedies.lower_lr_(optimizer, {trial.lr_factor:g})",
        "clip_grad_norm": f"clip the gradient norm: gw.remedies.clip_on_step(optimizer, "
                          f"max_norm={trial.clip:g})",
        "adam_eps": f"lower Adam's ε: gw.remedies.adam_eps_(optimizer, {SMALL_EPS:g})",
        "qk_layernorm": "add qk-layernorm: gw.remedies.qk_layernorm_(model)",
    }[remedy]
    n = len(trial.seeds)
    return (
        f"{how} (trained {n} seed{'s' if n > 1 else ''} × {trial.steps} steps: "
        f"{entry['unstable_trials']}/{n} unstable, median final loss "
        f"{entry['median_final_loss']:.3g}; without it {baseline['unstable_trials']}/{n} "
        f"unstable, {baseline['median_final_loss']:.3g})"
    )


def verify_in_training(
    model: nn.Module,
    trial: Trial,
    loss_fn: Callable[..., torch.Tensor] | None,
    kinds: Sequence[str],
) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """What :func:`gradwatch.fix` does with ``trial=``: the trials, and the advice they give.

    ``qk_layernorm`` is tried only if ``kinds`` allows "normalization" (it adds norms).

    Returns:
        (the model, with qk-layernorm if it helped; the report's ``trials`` dict; the
        recommendation lines of the training-loop remedies that helped).
    """
    if "normalization" not in kinds:
        trial = replace(trial, remedies=tuple(r for r in trial.remedies if r != "qk_layernorm"))
    trained, got = run_trials(model, trial, loss_fn or default_loss)
    by_name = {e["remedy"]: e for e in got.tried}
    recs = [advice_line(r, by_name[r], got.baseline, trial) for r in got.recommended]
    rewritten = next((e.get("rewritten", []) for e in got.tried
                      if e["remedy"] == "qk_layernorm" and e["accepted"]), [])
    trials = {"baseline": got.baseline, "tried": got.tried, "applied": got.applied,
              "recommended": got.recommended, "rewritten": rewritten,
              "elapsed_s": round(got.elapsed_s, 2)}
    return trained, trials, recs
