"""Sharded layouts on real gloo processes: every statistic equals one process on the union batch.

The harness (``shard_worker.py``) trains a LayerNorm / Linear / Tanh / Linear / ReLU / Linear
block for 3 steps under FSDP2 (with and without resharding after forward, with bf16
parameters), HSDP, tensor parallel, sequence parallel, 2-D and DDP, watched with every
statistic at every step. The same block trained in this process on the union batch is the
reference; each rank-0 worker also writes the statistics of the full tensors (gathered with
``full_tensor()``), the reference for mixed precision, whose bf16 forward no fp32 process
reproduces.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradwatch as gw

from .shard_worker import PRECISION, batches, loss_fn, make_model
from .test_ddp import check_failure, free_port

WORKER = Path(__file__).with_name("shard_worker.py")
PARAM_STATS = ("grad_norm", "grad_rms", "nonfinite", "grad_max_abs", "weight_norm",
               "update_ratio")
ACT_STATS = ("act_mean", "act_std", "saturated_frac")
BRUTE = ("grad_norm", "grad_max_abs", "weight_norm", "update_ratio")
#: dead_frac where the batch (data parallel) or the sequence (sequence parallel) is split over
#: ranks is the ranks' average (as under DDP), not the union's: a unit dead on one rank's
#: part may be alive on another's.
SPLIT_BATCH = {"fsdp2", "fsdp2_keep", "fsdp2_mp", "hsdp", "2d", "ddp", "sp"}
#: bp_{underflow,overflow}_* count d loss / d output as each rank's backward produced it
#: (what a cast there sees): with the batch split over D data-parallel ranks, each rank's
#: signal is D times the union's, so they are compared where no batch is split (tp, sp).
PER_RANK_SIGNAL = {"fsdp2", "fsdp2_keep", "fsdp2_mp", "hsdp", "2d", "ddp"}


def launch(base: Path, items: str, world: int, timeout: float = 300):
    """Start ``world`` ranks of the harness on ``items`` ("layout:mode,..."); wait for them."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), port, str(base), items],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**_env(), "OMP_NUM_THREADS": "1"},
        )
        for r in range(world)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{items}: a rank hung") from None
    return procs, outs


def _env():
    import os

    return dict(os.environ)


def single_process_run():
    """The block on the union batch in one process, every statistic at every step."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, optimizer=opt, detail_every=1, diagnose=False,
                  precision=PRECISION) as mon:
        for step in range(3):
            x, y = batches(step)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    return mon.run


_SINGLE = {}


def reference():
    if "run" not in _SINGLE:
        _SINGLE["run"] = single_process_run()
    return _SINGLE["run"]


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


def check_layout(base: Path, layout: str, world: int) -> dict[str, float]:
    """Assert every statistic of a harness run; return the largest relative error of each."""
    run_dir = base / f"{layout}-check" / "run"
    run = gw.load(run_dir)
    assert run.meta["distributed"] == {"world_size": world}
    single = reference()
    # the same statistics as one process, backprop_norm and time_* included
    assert set(run.stats["stat"]) == set(single.stats["stat"]), layout
    errors = {}
    brute = json.loads(run_dir.with_name("brute.json").read_text())
    for stat in sorted(set(run.stats["stat"])):
        a = run.pivot(stat)
        assert list(a.index) == [0, 1, 2], stat
        if stat in BRUTE:  # against the full tensors of this very run (full_tensor())
            b = np.array([[r[n]["update"] / r[n]["weight_norm"] if stat == "update_ratio"
                           else r[n][stat] for n in a.columns] for r in brute])
            errors[f"{stat} (full tensors)"] = rel_error(a.to_numpy(), b)
            np.testing.assert_allclose(a.to_numpy(), b, rtol=1e-5, err_msg=f"{layout}: {stat}")
        if layout == "fsdp2_mp" and stat not in ("grad_rms", "nonfinite"):
            continue  # bf16 compute: no fp32 process computes the same run
        if stat == "dead_frac" and layout in SPLIT_BATCH:
            continue
        if stat.startswith("bp_") and layout in PER_RANK_SIGNAL:
            continue
        b = single.pivot(stat)
        assert list(a.columns) == list(b.columns), stat
        if layout == "fsdp2_mp":  # grad_rms = grad_norm / sqrt(numel), numel of the full model
            if stat == "grad_rms":
                numel = {n: sum(p.numel() for p in getattr(make_model(), n).parameters())
                         for n in a.columns}
                gn = run.pivot("grad_norm")
                np.testing.assert_allclose(
                    a.to_numpy(), gn.to_numpy() / np.sqrt([numel[n] for n in a.columns]),
                    rtol=1e-6)
            else:
                assert (a.to_numpy() == 0).all()
            continue
        if stat == "nonfinite":
            np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
            continue
        tol = 1e-4 if stat in ACT_STATS or stat == "dead_frac" else 1e-5
        # log2 of the smallest nonzero |g|: one entry, the one most cancelled in its sums,
        # which another summation order moves by ~1e-4 of its value (1.5e-4 in log2)
        atol = 1e-3 if stat == "grad_log2_min" else 1e-7
        errors[stat] = rel_error(a.to_numpy(), b.to_numpy())
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=tol, atol=atol,
                                   err_msg=f"{layout}: {stat}")
    print(layout, json.dumps(errors))
    return errors


TWO = ("fsdp2", "fsdp2_keep", "fsdp2_mp", "tp", "sp")
FOUR = ("hsdp", "2d", "fsdp2", "tp", "sp", "ddp")


def harness(tmp_path_factory, world: int, items: str) -> Path:
    base = tmp_path_factory.mktemp(f"shard{world}")
    procs, outs = launch(base, items, world)
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)[-6000:]
    return base


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One launch of 2 ranks for every 2-rank layout, and the collective counts."""
    return harness(tmp_path_factory, 2, ",".join([f"{x}:check" for x in TWO]
                                                 + ["fsdp2:count", "tp:count", "fsdp2:nan",
                                                    "tp:nan", "fsdp2:partial"]))


@pytest.mark.parametrize("layout", TWO)
def test_two_ranks_match_one_process_on_the_union_batch(two_ranks, layout):
    check_layout(two_ranks, layout, 2)


@pytest.mark.parametrize("layout", ["fsdp2", "tp"])
def test_one_collective_at_recorded_steps_and_none_at_the_others(two_ranks, layout):
    """every=2: a recorded step adds exactly one collective to the plain step's.

    The worker counts the calls of torch.distributed's collectives (FSDP2 and tensor
    parallelism call their process groups' methods directly, so a plain step counts none
    here). Under tensor parallelism the recorded step's parameter statistics, backprop_norm
    and time_* share that one collective.
    """
    counts = json.loads((two_ranks / f"{layout}-count" / "counts.json").read_text())
    plain = counts["plain"]
    assert plain[0] == plain[1]
    assert counts["watched"] == [plain[0] + 1, plain[0], plain[0] + 1, plain[0]]


@pytest.mark.parametrize("layout", ["fsdp2", "tp"])
def test_nonfinite_entries_of_shards_add_up_and_copies_count_once(two_ranks, layout):
    """A NaN in one rank's shard counts 1; an Inf in every copy of a replicated gradient
    (tensor parallel's down.bias) counts 1, not once per rank."""
    run = gw.load(two_ranks / f"{layout}-nan" / "run")
    nonfinite = run.pivot("nonfinite").iloc[0].to_dict()
    expected = {"norm": 0, "up": 1, "down": 1 if layout == "tp" else 0, "head": 0}
    assert nonfinite == expected
    grad_norm = run.pivot("grad_norm").iloc[0]
    assert np.isnan(grad_norm["up"]) and np.isfinite(grad_norm["head"])
    if layout == "tp":  # the Inf copies: inf, as one process records it (not NaN from 0 * inf)
        assert grad_norm["down"] == np.inf


@pytest.mark.parametrize("layout", ["fsdp2", "tp"])
def test_diagnose_and_report_read_a_sharded_run(two_ranks, layout, tmp_path):
    """Rank 0 diagnosed the run at close; gw.diagnose and `gradwatch report` read it as the
    single process's run, with the same verdict."""
    from gradwatch.cli import main

    run_dir = two_ranks / f"{layout}-check" / "run"
    assert (run_dir / "findings.jsonl").is_file()
    found, single = gw.diagnose(run_dir), gw.diagnose(reference())
    assert [(f.kind, f.layers) for f in found] == [(f.kind, f.layers) for f in single]
    assert str(found).splitlines()[0] == str(single).splitlines()[0]
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "grad_norm" in html


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return harness(tmp_path_factory, 4, ",".join(f"{x}:check" for x in FOUR))


@pytest.mark.slow
@pytest.mark.parametrize("layout", FOUR)
def test_four_ranks_match_one_process_on_the_union_batch(four_ranks, layout):
    check_layout(four_ranks, layout, 4)


@pytest.mark.parametrize("layout", ["fsdp2", pytest.param("tp", marks=pytest.mark.slow)])
def test_one_rank_failing_ends_every_rank_with_the_users_exception(tmp_path, layout):
    """Rank 1 raises at step 12 under FSDP2 (tensor parallel: slow): every rank ends soon,
    the user's exception last on the failing rank, the steps flushed before kept."""
    procs, outs = launch(tmp_path, f"{layout}:fail", 2, timeout=150)
    ended = time.time()
    failed_at = float(re.search(r"failing at ([\d.]+)", outs[1]).group(1))
    check_failure(tmp_path / f"{layout}-fail" / "run", procs, outs, 1, ended - failed_at)


@pytest.mark.slow
def test_a_rank_whose_statistics_raise_ends_every_rank_with_that_exception(tmp_path):
    """Rank 1's shard statistics raise at step 12 (inside gradwatch, in optimizer.step()):
    skipping them would leave rank 0 alone in the step's collective. Every rank ends soon,
    rank 1 with that exception last; the steps flushed before are kept."""
    procs, outs = launch(tmp_path, "fsdp2:statfail", 2, timeout=150)
    ended = time.time()
    failed_at = float(re.search(r"failing at ([\d.]+)", outs[1]).group(1))
    assert ended - failed_at < 30, f"ranks took {ended - failed_at:.1f} s to end"
    assert all(p.returncode != 0 for p in procs)
    last = outs[1].strip().splitlines()[-1]
    assert "UserError: rank 1 failed at step 12" in last, outs[1][-3000:]
    assert "Timed out" not in outs[0] + outs[1]
    run = gw.load(tmp_path / "fsdp2-statfail" / "run")
    assert run.meta["status"] == "failed"
    assert run.steps == list(range(10))


def test_gradients_both_partial_and_shard_are_summed_then_counted_once(two_ranks):
    """Shard(0) x Partial() gradients on 2 x 1 and 1 x 2 meshes: the recorded grad_norm and
    grad_max_abs are those of the summed gradient (full_tensor()), not of its addends."""
    found = json.loads((two_ranks / "fsdp2-partial" / "partial.json").read_text())
    for layer in ("a", "b"):
        for stat in ("grad_norm", "grad_max_abs"):
            want = found["expected"][layer][stat]
            assert found["got"][stat][layer] == pytest.approx(want, rel=1e-6), (layer, stat)
