"""Running one case: the check at initialisation, the watched training run, the outcome.

:func:`run_case` is what a worker process calls; it returns a plain dict (JSON-ready), so
cases can run in a process pool. Each worker uses one intra-op thread and flushes
subnormal floats to zero (vanishing nets put their gradients and Adam's moments there, where
the CPU is ~100× slower; a value under 1e-38 is vanished either way).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

import gradwatch as gw
from gradwatch.diagnose import verdict

from .case import Case, Train


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def _as_args(inputs) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _kinds(findings) -> list[str]:
    return sorted({f"{f.kind}:{f.severity}" for f in findings})


def _offered(findings, case: Case) -> dict[str, list[str]]:
    """Remedies offered, and those of them the case forbids (the model has them)."""
    offered = sorted({r for f in findings for r in f.remedies})
    return {"remedies": offered,
            "forbidden_offered": [r for r in offered if r in case.forbid_remedies]}


def check_at_init(case: Case) -> dict[str, Any]:
    """``gw.check`` on the case's batch, on a freshly built model."""
    model = _seeded(case.seed, case.model)
    torch.manual_seed(case.seed + 1)
    inputs, targets = case.batch()
    cu = gw.check(model, inputs, targets, case.loss, precision=case.precision,
                  loss_scale=case.loss_scale)
    return {"verdict": cu.verdict, "findings": _kinds(cu.findings),
            "messages": [f.message for f in cu.findings][:6], **_offered(cu.findings, case)}


def _loss_of(out, targets, loss_fn) -> torch.Tensor:
    if loss_fn is not None:
        return loss_fn(out, targets)
    return torch.nn.functional.cross_entropy(out, targets)


def train_watched(case: Case) -> dict[str, Any]:
    """Train as ``case.train`` says under ``gw.watch``; diagnose the run; judge the outcome."""
    tr: Train = case.train
    model = _seeded(case.seed, tr.model or case.model)
    opt = tr.optimizer(model)
    loss_fn = tr.loss or case.loss
    scaler = None
    options: dict[str, Any] = {}
    if tr.scaler_init_scale is not None:
        scaler = torch.amp.GradScaler("cpu", init_scale=tr.scaler_init_scale)
        options["scaler"] = scaler
    if case.precision is not None:
        options["precision"] = case.precision
    amp = (torch.autocast("cpu", dtype=tr.autocast) if tr.autocast is not None
           else contextlib.nullcontext())
    losses: list[float] = []
    with gw.watch(model, None, optimizer=opt, diagnose=False, **options) as mon:
        for step in range(tr.steps):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(tr.accumulate):
                inputs, targets = tr.batch(step * tr.accumulate + micro)
                with amp:
                    loss = _loss_of(model(*_as_args(inputs)), targets, loss_fn) / tr.accumulate
                (scaler.scale(loss) if scaler is not None else loss).backward()
                total += float(loss.detach())
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            mon.step(total)
            losses.append(total)
            if not math.isfinite(total) and tr.outcome == "diverges":
                break  # diverged: the rest of the run would only repeat the NaN
    findings = gw.diagnose(mon.run)
    return {"verdict": verdict(findings), "findings": _kinds(findings),
            "messages": [f.message for f in findings][:6], **_offered(findings, case),
            **judge(losses, tr)}


def judge(losses: list[float], tr: Train) -> dict[str, Any]:
    """What the loss did, and whether that is the outcome the case states.

    The start is the mean of the first ``window`` losses, the end the mean of the last
    ``window``; "trains" means end ≤ (1 - drop) · reference (the baseline, else the start);
    a non-finite loss anywhere, or an end above ``rise`` times the start, is "diverges".
    """
    w = max(1, min(tr.window, len(losses) // 2))
    start = sum(losses[:w]) / w
    ref = tr.baseline if tr.baseline is not None else start
    finite = all(math.isfinite(v) for v in losses)
    end = sum(losses[-w:]) / w if finite else float("nan")
    if not finite or end > tr.rise * max(start, ref):
        got = "diverges"
    elif end <= (1 - tr.drop) * ref:
        got = "trains"
    else:
        got = "stalls"
    return {"loss_start": start, "loss_end": end, "outcome": got,
            "steps_run": len(losses), "truth_held": got == tr.outcome}


def run_case(case: Case) -> dict[str, Any]:
    """Run one case (check at init, then the training run); times in seconds.

    Sets one intra-op thread (left so) and flushes subnormals for the case's duration.
    """
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        return _run_case(case)
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default (there is no getter)


def _run_case(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": case.name, "family": case.family, "source": case.source, "why": case.why,
        "expect_init": case.expect_init, "expect_run": case.expect_run,
        "expect_outcome": case.train.outcome, "drop": case.train.drop,
        "budget_s": case.budget_s,
    }
    for key, fn in (("init", check_at_init), ("run", train_watched)):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            res = fn(case)
        except Exception as exc:  # noqa: BLE001 - a failing case is reported, not fatal
            res = {"verdict": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
        res["wall_s"] = time.perf_counter() - wall
        res["cpu_s"] = time.process_time() - cpu
        row[key] = res
    row["cpu_s"] = row["init"]["cpu_s"] + row["run"]["cpu_s"]
    row["over_budget"] = row["cpu_s"] > case.budget_s
    return row
